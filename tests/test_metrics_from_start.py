"""Every metric the docs list is exported from a fresh process's first scrape, at 0, not
only after its first increment: a real agent (real netns) and a real operator (against
the emulator), scraped as soon as /metrics answers."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from node_harness import make_node_env, teardown_node_env

from cni_plugin import contract
from eniway_cloudsim.testing import start_in_process
from eniway_operator import kube as kube_mod
from eniway_operator.testing import (
    OperatorProcess,
    make_node,
    parse_metrics,
    wait_for,
    with_provider,
)
from localcluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"
FILES = REPO / "charts" / "eniway" / "files"
ZONE = "cn-hangzhou-i"
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}


def documented(heading_prefix: str) -> dict[str, list[str]]:
    """metric -> its labels, from the docs/operations.md table after the heading line."""
    text = DOC.read_text()
    start = next(i for i, line in enumerate(text.splitlines())
                 if line.startswith(heading_prefix))
    rows: dict[str, list[str]] = {}
    for line in text.splitlines()[start + 1:]:
        if line.startswith("| `eniway_"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = [x.strip() for x in cells[1].split(",") if x.strip()]
        elif rows and not line.startswith("|"):
            break
    assert rows, heading_prefix
    return rows


def first_scrape(url: str, alive: object) -> str:
    body: list[str] = []

    def got() -> bool:
        assert callable(alive) and alive(), "the process exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body.append(r.read().decode())
                return True
        except OSError:
            return False

    wait_for(got, 60, f"{url} answers", interval=0.05)
    return body[0]


def samples(text: str, name: str) -> dict[str, float]:
    """The series of one metric (histograms by their _count)."""
    out = {}
    for key, value in parse_metrics(text).items():
        base = key.split("{", 1)[0]
        if base in (name, name + "_count"):
            out[key] = value
    return out


@pytest.fixture(scope="module")
def agent_scrape(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    import os
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)")
    env = make_node_env(cluster, tmp_path_factory.mktemp("fresh-agent"), start_agent=False)
    try:
        env.agent.start(wait_ready=False)
        proc = env.agent.proc
        return first_scrape(f"http://127.0.0.1:{env.agent.port}/metrics",
                            lambda: proc is not None and proc.poll() is None)
    finally:
        teardown_node_env(env)


@pytest.fixture(scope="module")
def operator_scrapes(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[dict[str, str]]:
    """A fresh operator's first scrape, and one once it has done a round for a node."""
    sim = with_provider(start_in_process())
    ns = "fresh-" + secrets.token_hex(3)
    topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
    cluster.kubectl("create", "namespace", ns)
    cfg = json.dumps({"security_group_ids": [topo.security_group_id]})
    cluster.kubectl("create", "configmap", "eniway-config", "-n", ns,
                    f"--from-literal=config.json={cfg}")
    op = OperatorProcess(cluster.kubeconfig, "fresh-" + ns, sim.endpoint, sim.region, ns,
                         "eniway-config", (sim.access_key_id, sim.access_key_secret),
                         tmp_path_factory.mktemp("fresh-op") / "operator.log",
                         extra=("--lease-name=" + ns,))
    api = kube_mod.load_config(str(cluster.kubeconfig))
    node = ns
    try:
        op.start()
        first = first_scrape(f"http://127.0.0.1:{op.metrics_port}/metrics", op.alive)
        inst = sim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                         [topo.security_group_id])
        make_node(api, node, inst["provider_id"], "ecs.g6.large", ZONE)

        def after_a_round() -> str | None:
            text = first_scrape(f"http://127.0.0.1:{op.metrics_port}/metrics", op.alive)
            return text if f'eniway_pool_pending_pods{{node="{node}"}}' in text else None

        running = wait_for(after_a_round, 120, f"a round for node {node}")
        yield {"first": first, "running": running}
    finally:
        op.stop()
        with contextlib.suppress(Exception):
            client.CoreV1Api(api).delete_node(node)
        api.close()
        sim.close()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator_scrape(operator_scrapes: dict[str, str]) -> str:
    return operator_scrapes["first"]


def test_agent_exports_every_documented_metric_from_start(agent_scrape: str) -> None:
    missing = [m for m in documented("Agent (") if not samples(agent_scrape, m)]
    assert not missing, f"not in a fresh agent's first scrape: {missing}"
    # Nothing happened yet: no CNI request, no GC; these series exist at 0.
    for name in ("eniway_cni_errors_total", "eniway_cni_request_duration_seconds",
                 "eniway_gc_reclaimed_total", "eniway_gc_orphans_removed_total",
                 "eniway_datapath_repairs_total"):
        assert set(samples(agent_scrape, name).values()) == {0.0}, name
    for cmd in (contract.WIRE_ADD, contract.WIRE_DEL, contract.WIRE_CHECK):
        assert samples(agent_scrape, "eniway_cni_errors_total").get(
            f'eniway_cni_errors_total{{code="{contract.ERR_NO_FREE_IP}",command="{cmd}"}}'
        ) == 0.0, cmd
    # Every reason docs/operations.md names for the GC counter is a series already.
    doc = DOC.read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `eniway_gc_reclaimed"))
    reasons = re.findall(r"`([a-z]+-[a-z]+)`", row)
    assert len(reasons) >= 4, row
    got = samples(agent_scrape, "eniway_gc_reclaimed_total")
    for reason in reasons:
        assert f'eniway_gc_reclaimed_total{{reason="{reason}"}}' in got, reason


def test_operator_exports_every_documented_metric_from_start(operator_scrape: str) -> None:
    docs = documented("Operator (")
    # Per-node series appear with the node's first round (documented so): none here.
    global_ones = [m for m, labels in docs.items() if "node" not in labels]
    missing = [m for m in global_ones if not samples(operator_scrape, m)]
    assert not missing, f"not in a fresh operator's first scrape: {missing}"
    throttled = {k: v for k, v in samples(operator_scrape, "eniway_cloud_attempts_total").items()
                 if 'result="Throttled"' in k}
    assert len(throttled) >= 5 and set(throttled.values()) == {0.0}, throttled


# -- alert rules and dashboard against what the processes export ---------------------------

def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dash = json.loads((FILES / "grafana-dashboard.json").read_text())
    return {f"{p['title']} ({t['refId']})": t["expr"] for p in dash["panels"]
            for t in p["targets"]}


def exported(*scrapes: str) -> dict[str, dict[str, set[str]]]:
    """Series name -> label -> values seen, over the scrapes."""
    out: dict[str, dict[str, set[str]]] = {}
    for text in scrapes:
        for key in parse_metrics(text):
            name, _, rest = key.partition("{")
            labels = out.setdefault(name, {})
            for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest):
                labels.setdefault(k, set()).add(v)
    return out


def problems(exprs: dict[str, str], series: dict[str, dict[str, set[str]]]) -> list[str]:
    """Every metric an expression names is exported; every label it matches on exists on
    that metric; every value it matches with = is one the metric has."""
    bad = []
    for where, expr in exprs.items():
        names = re.findall(r"\b(eniway_\w+)", expr)
        if not names:
            bad.append(f"{where}: names no eniway metric")
        for name in names:
            if name not in series:
                bad.append(f"{where}: {name} is not exported")
        for name, matchers in re.findall(r"\b(eniway_\w+)\{([^}]*)\}", expr):
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                have = series.get(name, {})
                if label not in have and label not in TARGET_LABELS:
                    bad.append(f"{where}: {name} has no label {label}")
                elif op == "=" and label in have and value not in have[label]:
                    bad.append(f"{where}: {name}{{{label}={value!r}}} is never exported "
                               f"(it has {sorted(have[label])})")
        for labels in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in labels.split(",")):
                if label not in TARGET_LABELS and not any(
                        label in series.get(n, {}) for n in names):
                    bad.append(f"{where}: grouped by {label}, which none of {names} has")
    return bad


def test_alerts_and_dashboard_name_only_what_the_components_export(
        agent_scrape: str, operator_scrapes: dict[str, str]) -> None:
    series = exported(agent_scrape, operator_scrapes["running"])
    alerts, panels = alert_exprs(), dashboard_exprs()
    assert len(alerts) >= 10 and len(panels) >= 15
    assert not problems(alerts, series), "\n".join(problems(alerts, series))
    assert not problems(panels, series), "\n".join(problems(panels, series))
    # The check itself finds a metric nobody exports, a label and a value that do not exist.
    assert problems({"x": "rate(eniway_cni_errors{code=\"100\"}[5m])"}, series)
    assert problems({"x": "eniway_cni_errors_total{node=\"a\"}"}, series)
    assert problems({"x": "eniway_cloud_calls_total{result=\"Throttling\"}"}, series)


def test_every_alert_says_what_and_how_bad() -> None:
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        assert rule["annotations"]["summary"], rule
        assert re.fullmatch(r"Eniway[A-Za-z]+", rule["alert"]), rule


