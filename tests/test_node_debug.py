"""``eniway-agent debug`` against a real agent process on a real emulated node (netns,
veths, route tables): allocations, free and cooling IPs, ENIs with their tables and
rules, pending releases and the last errors, as tables and as JSON; and a clear error
when no agent runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from node_harness import NodeEnv, make_node_env, teardown_node_env, wait_for

from cni_plugin import contract
from cni_plugin.shim import call_agent
from eniway_operator.skew import operator_version
from localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

AGENT = str(Path(sys.executable).parent / "eniway-agent")


@pytest.fixture
def env(cluster: LocalCluster, tmp_path: Path) -> Iterator[NodeEnv]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces)")
    e = make_node_env(cluster, tmp_path, ips_per_eni=4, agent_extra=["--cooldown", "600"])
    try:
        yield e
    finally:
        teardown_node_env(e)


def debug(env: NodeEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "debug", "--socket", env.agent.socket, *args],
                          capture_output=True, text=True, timeout=60)


def snapshot(env: NodeEnv) -> dict[str, Any]:
    p = debug(env, "-o", "json")
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout))


def test_debug_shows_the_nodes_pool_enis_releases_and_errors(env: NodeEnv) -> None:
    net, shim = env.net, env.shim
    uids = {n: env.op.create_pod("default", n) for n in ("keep", "gone")}
    pods = {n: net.pod_netns() for n in uids}
    ips = {}
    for n, ns in pods.items():
        r = shim.add(f"c-{n}", ns, ("default", n, uids[n]))
        assert r.rc == 0, r.stderr
        ips[n] = r.ip
    assert shim.delete("c-gone", pods["gone"], ("default", "gone", uids["gone"])).rc == 0
    # A request the agent refuses (the sandbox's netns is gone): among the last errors.
    bad = call_agent(env.agent.socket, {
        "command": contract.WIRE_ADD, "containerId": "c-bad", "ifname": "eth0",
        "netns": f"/run/netns/gone-{net.tag}", "podNamespace": "default", "podName": "bad",
        "podUID": "u"}, 30)
    assert bad["ok"] is False and bad["code"] == contract.ERR_INVALID_ENV, bad
    # The operator asks two free IPs back (one of them cooling, one held by a pod).
    s0 = snapshot(env)
    asked = [s0["free"][0], ips["gone"], ips["keep"]]
    token = env.op.release(asked)
    s = wait_for(lambda: (x := snapshot(env))["release"]["token"] == token and x, 30,
                 "release request seen")

    assert s["node"] == env.agent.node and s["ready"] is True
    assert s["version"] == operator_version() != "unknown"  # one package, one version
    # ... which the agent also reports where the operator checks the skew policy
    wait_for(lambda: env.op.agent_status().get("version") == s["version"], 30,
             "status.agent.version")
    # allocations: the live pod, with its ENI and veth
    assert [(a["ip"], a["pod"]) for a in s["allocations"]] == [(ips["keep"], "default/keep")]
    keep = s["allocations"][0]
    assert keep["veth"].startswith(contract.VETH_PREFIX) and keep["container"] == "c-keep"
    # free and cooling: the released IP rests (cooldown 600 s), the listed ones are not free
    assert [c["ip"] for c in s["cooling"]] == [ips["gone"]]
    assert 0 < s["cooling"][0]["remaining"] <= 600
    assert not set(asked) & set(s["free"])
    total = sum(len(e["ips"]) for e in s["enis"])
    assert s["counts"]["total"] == total == 8
    assert s["counts"]["free"] == len(s["free"]) == total - 3
    # ENIs: each secondary with its table, as netlink has it in the node's netns
    assert sorted(e["id"] for e in s["enis"]) == sorted(e.id for e in net.enis if not e.primary)
    for e in s["enis"]:
        real = net.node(f"route show table {e['table']}").stdout
        assert f"default via {net.gateway} dev {e['ifname']}" in real  # the truth
        assert f"default via {net.gateway} dev {e['ifname']}" in e["routes"], e
    owner = next(e for e in s["enis"] if ips["keep"] in e["ips"])
    rule = f"{contract.RULE_PRIORITY_FROM_POD}: from {ips['keep']}/32 lookup {owner['table']}"
    assert rule in owner["rules"], owner["rules"]
    # the release request: what no pod holds is acknowledged, the pod's IP is held
    assert s["release"]["requested"] == sorted(asked, key=lambda ip: [int(x) for x in
                                                                        ip.split(".")])
    assert set(s["release"]["acknowledged"]) == {s0["free"][0], ips["gone"]}
    assert s["release"]["held"] == [ips["keep"]]
    # last errors: the refused ADD, with its code
    assert any(x["source"] == "cni" and "code 4" in x["message"] and "default/bad" in x["message"]
               for x in s["errors"]), s["errors"]

    # The same for people: tables with the same facts.
    table = debug(env)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    for needle in (f"node {env.agent.node}", "ENIs", "Allocations", "Pending releases",
                   "Last errors", ips["keep"], "default/keep", f"{ips['gone']} (",
                   f"table {owner['table']}", rule, "code 4"):
        assert needle in out, f"{needle!r} not in:\n{out}"
    print(out)


def test_debug_with_no_agent_says_so(env: NodeEnv) -> None:
    env.agent.stop()
    p = debug(env)
    assert p.returncode == 1
    assert p.stdout == ""
    assert f"no eniway-agent answers on {env.agent.socket}" in p.stderr, p.stderr
    assert "Is the agent running on this node?" in p.stderr
    assert "Traceback" not in p.stderr
