"""The docs say only what the code does: every flag, pool key and metric they document
exists with that default and those labels, nothing cites a file users do not have, and
every shell command in a ```sh block either runs here (helm against the chart, kubectl
against the real apiserver) or is listed below with the reason it cannot."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from chart_rbac import CHART, REPO, helm

from cni_plugin.agent import main as agent_main
from cni_plugin.agent.metrics import Metrics
from eniway_operator import config as pool_config
from eniway_operator import main as operator_main
from eniway_operator import metrics as operator_metrics
from localcluster import BIN, LocalCluster

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIGURATION = REPO / "docs" / "configuration.md"

# Commands in the docs that cannot run in this test, and why. A command that is neither
# run nor listed here fails test_every_shell_command_is_run_or_excused.
NOT_HERE = {
    "make demo": "the README's demo; tests/test_demo.py runs it",
    "make test": "the whole suite itself",
    "docker build": "no container engine here; tests/test_chart_image.py checks the Dockerfile",
    "docker push": "no registry",
    "kubectl -n kube-system rollout status": "the release of test_chart_install has no "
                                             "kubelet; test_chart_nodes waits for the agent "
                                             "pods on real nodes",
    "kubectl describe enipool NODE": "needs a node of a running install (test_operator_e2e)",
    "kubectl delete crd": "the CRDs are shared by the whole test session",
    "rm -rf": "host paths of a real node",
    "eniway-operator uninstall": "needs a cloud; tests/test_uninstall.py runs it on the emulator",
    "kubectl -n kube-system exec": "no kubelet runs the agent pods here; "
                                   "tests/test_node_debug.py runs eniway-agent debug against "
                                   "a real agent",
}


def _code_blocks(path: Path) -> Iterator[tuple[str, str]]:
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", path.read_text(), re.M | re.S):
        yield m.group(1), m.group(2)


def shell_commands() -> list[tuple[str, str]]:
    """(doc, command) for every command of every ```sh block, continuations joined and
    comments dropped."""
    out = []
    for doc in DOCS:
        for lang, body in _code_blocks(doc):
            if lang not in ("sh", "bash", "shell"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                cmd = line.split("  #", 1)[0].strip()
                if cmd and not cmd.startswith("#"):
                    out.append((doc.name, " ".join(cmd.split())))
    return out


def _excused(cmd: str) -> bool:
    return any(cmd.startswith(prefix) for prefix in NOT_HERE)


def _runs_here(cmd: str) -> bool:
    return cmd.startswith(("helm ", "kubectl ")) and not _excused(cmd)


def test_every_shell_command_is_run_or_excused() -> None:
    cmds = shell_commands()
    assert any(c.startswith("helm install") for _, c in cmds)
    unhandled = [(d, c) for d, c in cmds if not _runs_here(c) and not _excused(c)]
    assert not unhandled, unhandled
    used = {p for p in NOT_HERE if any(c.startswith(p) for _, c in cmds)}
    assert used == set(NOT_HERE), f"excuses for commands no longer in the docs: " \
                                  f"{set(NOT_HERE) - used}"


def _chart_args(cmd: str) -> tuple[str, list[str], list[str]]:
    """A documented ``helm install|upgrade`` as (release, namespace options, values)."""
    argv = shlex.split(cmd)
    assert argv[1] in ("install", "upgrade"), cmd
    release, chart = argv[2], argv[3]
    assert (REPO / chart).resolve() == CHART, cmd
    ns: list[str] = []
    values: list[str] = []
    i = 4
    while i < len(argv):
        if argv[i] in ("-n", "--namespace"):
            ns += argv[i:i + 2]
            i += 2
        elif argv[i] in ("--set", "--set-json", "--set-string", "-f"):
            values += argv[i:i + 2]
            i += 2
        else:
            assert argv[i] in ("--reuse-values", "--reset-values", "--wait"), (argv[i], cmd)
            i += 1
    return release, ns, values


@pytest.mark.parametrize("cmd", [c for _, c in shell_commands()
                                 if c.startswith(("helm install", "helm upgrade"))])
def test_documented_helm_commands_pass_the_charts_schema(cmd: str) -> None:
    release, ns, values = _chart_args(cmd)
    out = helm("template", release, str(CHART), *ns, *values, check=False)
    assert out.returncode == 0, f"{cmd}\n{out.stderr}"
    lint = helm("lint", "--strict", str(CHART), *values, check=False)
    assert lint.returncode == 0, f"{cmd}\n{lint.stdout}{lint.stderr}"


@pytest.mark.cluster
def test_documented_commands_run_against_the_apiserver(cluster: LocalCluster) -> None:
    """install.md and operations.md in order, on the real apiserver: the secret, the
    install, every listing, the upgrade, the uninstall (no kubelet: pods never run)."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": f"{BIN}:{os.environ['PATH']}"}
    ran = []
    try:
        for _doc, cmd in shell_commands():
            if not _runs_here(cmd):
                continue
            cmd = cmd.replace("involvedObject.name=NODE", "involvedObject.name=no-such-node")
            if cmd.startswith("helm uninstall"):  # no kubelet runs the pre-delete hook's Job
                cmd += " --no-hooks"
            res = subprocess.run(cmd, shell=True, cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=300)
            assert res.returncode == 0, f"{cmd}\n{res.stdout}{res.stderr}"
            ran.append(cmd.split()[:3])
    finally:
        subprocess.run("helm uninstall eniway -n kube-system --no-hooks; kubectl -n kube-system "
                       "delete secret eniway-cloud --ignore-not-found", shell=True, env=env,
                       capture_output=True, timeout=300)
    assert ["helm", "install", "eniway"] in ran and ["helm", "uninstall", "eniway"] in ran


# -- flags ------------------------------------------------------------------------------

def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(path: Path, heading: str) -> list[list[str]]:
    """Rows (cells) of the first table after the heading ``heading``."""
    text = path.read_text()
    start = text.index(f"\n{heading}\n")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append(_cells(line))
        elif rows:
            break
    return rows[2:]  # header and rule


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ENIWAY_", "ALIBABA_CLOUD_")) or name in (
                "KUBECONFIG", "POD_NAMESPACE", "NODE_NAME"):
            monkeypatch.delenv(name)


def _check_flags(rows: list[list[str]], default_col: int, parser: Any,
                 dynamic: set[str]) -> None:
    actions = {a.option_strings[0]: a for a in parser._actions
               if a.option_strings and a.option_strings[0] != "-h"}
    documented: set[str] = set()
    for row in rows:
        flags = [f.split()[0] for f in re.findall(r"`(--[\w-]+(?: [A-Z]+)?)`", row[0])]
        if not flags:
            continue
        parts = row[default_col].split(", ")
        parts = parts if len(parts) == len(flags) else [row[default_col]] * len(flags)
        for flag, doc in zip(flags, parts, strict=True):
            assert flag in actions, f"{flag} is documented but no such flag"
            documented.add(flag)
            default = actions[flag].default
            if flag in dynamic or default is None or default is False or default == "":
                continue
            if isinstance(default, int | float):
                num = re.search(r"-?\d+(\.\d+)?", doc)
                assert num and float(num.group()) == default, (flag, doc, default)
            else:
                assert f"`{default}`" in doc or doc == default, (flag, doc, default)
    assert set(actions) == documented, f"undocumented: {set(actions) - documented}"


def test_operator_flags_documented_with_their_defaults(no_env: None) -> None:
    rows = _table(CONFIGURATION, "## eniway-operator")
    _check_flags(rows, 2, operator_main.build_parser(), dynamic={"--identity"})


@pytest.mark.parametrize("doc", [CONFIGURATION, REPO / "docs" / "node.md"])
def test_agent_flags_documented_with_their_defaults(doc: Path, no_env: None) -> None:
    heading = "## eniway-agent" if doc == CONFIGURATION else "## eniway-agent flags"
    _check_flags(_table(doc, heading), 1, agent_main.build_parser(), dynamic=set())


def test_pool_keys_documented_with_their_defaults() -> None:
    rows = {r[0].strip("`"): r[1] for r in _table(CONFIGURATION, "## Pool configuration")}
    defaults = pool_config.PoolConfig()
    assert set(rows) == {f.name for f in fields(defaults)}
    for key, doc in rows.items():
        value = getattr(defaults, key)
        token = doc.split()[0].strip("`")
        if isinstance(value, bool):
            assert token == str(value).lower(), (key, doc)
        elif isinstance(value, int):
            assert int(token) == value, (key, doc)
        elif isinstance(value, float):
            assert pool_config.parse_duration(token, key) == value, (key, doc)
        elif isinstance(value, str):
            assert token == value, (key, doc)
        else:
            assert not value and token in ("{}", "[]"), (key, doc)


# -- metrics ----------------------------------------------------------------------------

def _registered(registry: Any) -> dict[str, tuple[str, ...]]:
    out = {}
    for collector in registry._collector_to_names:
        name = collector._name + ("_total" if collector._type == "counter" else "")
        out[name] = tuple(collector._labelnames)
    return out


def _documented_metrics(which: str) -> dict[str, tuple[str, ...]]:
    text = (REPO / "docs" / "operations.md").read_text()
    part = text[text.index(f"\n{which} ("):]
    rows = []
    for line in part.splitlines()[1:]:
        if line.startswith("| `eniway_"):
            rows.append(_cells(line))
        elif rows:
            break
    return {r[0].strip("`"): tuple(x.strip() for x in r[1].split(",") if x.strip())
            for r in rows}


@pytest.mark.parametrize(("which", "registry"), [
    ("Operator", operator_metrics.REGISTRY), ("Agent", Metrics().registry)])
def test_metrics_documented_with_their_labels(which: str, registry: Any) -> None:
    assert _documented_metrics(which) == _registered(registry)


def test_node_md_names_agent_metrics_with_their_labels() -> None:
    agent = _registered(Metrics().registry)
    text = (REPO / "docs" / "node.md").read_text()
    for name, labels in re.findall(r"`(eniway_\w+)(?:\{([^}]*)\})?`", text):
        assert name in agent, name
        if labels:  # a bare name in prose need not list them
            documented = tuple(x.split("=")[0] for x in labels.split(","))
            assert documented == agent[name], (name, documented, agent[name])


# -- nothing users do not have ----------------------------------------------------------

def test_no_reference_to_files_users_do_not_have() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    this = Path(__file__).relative_to(REPO).as_posix()
    design = "DESIGN" + ".md"
    bad = []
    for rel in tracked:
        path = REPO / rel
        if rel == this or not path.is_file() or path.suffix in (".tsv", ".png"):
            continue
        text = path.read_text(errors="replace")
        for n, line in enumerate(text.splitlines(), 1):
            if design in line or "\u00a7" in line:
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


# -- cloud figures ------------------------------------------------------------------------

def test_rate_limit_and_retry_figures_are_the_codes() -> None:
    from eniway_operator.cloud.aliyun import AliyunProvider
    from eniway_operator.cloud.backoff import RetryPolicy
    from eniway_operator.cloud.ratelimit import DEFAULT_RATES, FALLBACK_RATE, Rate

    documented: dict[str, Rate] = {}
    for cells in _table(CONFIGURATION, "### Rate limits"):
        rate = Rate(float(cells[1]), int(cells[2]))
        for api in cells[0].split(", "):
            if api == "anything else":
                assert rate == FALLBACK_RATE
                continue
            *verbs, last = api.split("/")  # Attach/Detach/DeleteNetworkInterface
            verb, noun = re.match(r"([A-Z][a-z]+)(.*)", last).groups()  # type: ignore[union-attr]
            for v in [*verbs, verb]:
                documented[v + noun] = rate
    assert documented == DEFAULT_RATES

    retries = {c[0].split(" (")[0]: c for c in _table(CONFIGURATION, "### Retries")}
    policy = RetryPolicy()
    for key, backoff in (("throttling", policy.throttled), ("server errors", policy.server)):
        cells = retries[key]
        assert cells[1] == f"up to {backoff.max_attempts} attempts", cells
        assert cells[2] == f"{backoff.base:g} s doubling, capped at {backoff.cap:g} s", cells
    text = CONFIGURATION.read_text()
    timeout = inspect.signature(AliyunProvider).parameters["limiter_timeout"].default
    assert f"waits for its token up to {timeout:g} s" in " ".join(text.split())


def test_ec2_rate_limits_and_iam_actions_are_the_codes() -> None:
    """The EC2 rate table is aws.EC2_RATES; the IAM list is every EC2 action the provider
    calls (the client's methods it names), and CreateTags for tagging at creation."""
    from eniway_operator.cloud import aws
    from eniway_operator.cloud.ratelimit import Rate

    documented: dict[str, Rate] = {}
    for cells in _table(CONFIGURATION, "#### Rate limits on EC2"):
        rate = Rate(float(cells[1]), int(cells[2]))
        for api in cells[0].split(", "):
            if api == "anything else":
                assert rate == aws.EC2_FALLBACK_RATE
            else:
                documented[api] = rate
    assert documented == aws.EC2_RATES

    text = " ".join(CONFIGURATION.read_text().split())
    start = text.index("**IAM permissions**")
    listed = set(re.findall(r"`ec2:(\w+)`", text[start:text.index("####", start)]))
    source = Path(inspect.getfile(aws)).read_text()
    to_api = boto3_ec2_method_names()
    called = {to_api[m] for m in re.findall(r"self\._client\.(\w+)", source)}
    assert listed == called | {"CreateTags"}


def boto3_ec2_method_names() -> dict[str, str]:
    import boto3

    client = boto3.session.Session().client(
        "ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    return dict(client.meta.method_to_api_mapping)
