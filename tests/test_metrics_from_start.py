"""Every metric the docs list is exported from a fresh process's first scrape, at 0, not
only after its first increment: a real agent (real netns) and a real operator (against
the emulator), scraped as soon as /metrics answers."""

from __future__ import annotations

import re
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import make_node_env, teardown_node_env

from cni_plugin import contract
from eniway_cloudsim.testing import start_in_process
from eniway_operator.testing import OperatorProcess, parse_metrics, wait_for, with_provider
from localcluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "operations.md"


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
def operator_scrape(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[str]:
    sim = with_provider(start_in_process())
    ns = "fresh-" + secrets.token_hex(3)
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "configmap", "eniway-config", "-n", ns,
                    "--from-literal=config.yaml={}")
    op = OperatorProcess(cluster.kubeconfig, "fresh-" + ns, sim.endpoint, sim.region, ns,
                         "eniway-config", (sim.access_key_id, sim.access_key_secret),
                         tmp_path_factory.mktemp("fresh-op") / "operator.log",
                         extra=("--lease-name=" + ns,))
    try:
        op.start()
        yield first_scrape(f"http://127.0.0.1:{op.metrics_port}/metrics", op.alive)
    finally:
        op.stop()
        sim.close()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


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
