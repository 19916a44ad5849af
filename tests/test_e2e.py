"""End to end: the real control plane and scheduler, eniway-cloudsim with its VPC network,
three nodes (network namespaces) each with eniway-agent and a kubelet stand-in running the
CNI binary as a runtime does, and the operator. Real packets between pods."""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from clusterbox import ClusterBox, NodeSpec, wait_for
from cni_plugin import contract

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

NODES = [NodeSpec("e2e-a", "ecs.g6.large"), NodeSpec("e2e-b", "ecs.c6.xlarge"),
         NodeSpec("e2e-c", "ecs.g6.xlarge")]


@pytest.fixture(scope="module")
def box() -> Iterator[ClusterBox]:
    import os
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces)")
    b = ClusterBox(NODES, pool_config={"min_pool_size": 2, "max_pool_size": 5})
    b.start()
    try:
        wait_for(lambda: len(b.pools()) == 3 and all(
            p.get("status", {}).get("counts", {}).get("free", 0) >= 2
            for p in b.pools().values()), 180, "warm pools")
        yield b
    finally:
        b.stop()


def _running(box: ClusterBox, app: str, n: int, timeout: float = 240) -> list[dict[str, Any]]:
    def ok() -> list[dict[str, Any]] | None:
        pods = box.running_pods(f"app={app}")
        return pods if len(pods) == n and len(box.pods(f"app={app}")) == n else None
    result: list[dict[str, Any]] = wait_for(ok, timeout, f"{n} running pods of {app}")
    return result


def _cloud_ips_by_eni(box: ClusterBox) -> dict[str, set[str]]:
    assert box.cloud is not None
    out: dict[str, set[str]] = {}
    for eni in box.cloud.provider().describe_enis():
        out[eni.eni_id] = set(eni.private_ips)
    return out


def _assert_consistent(box: ClusterBox, pods: list[dict[str, Any]]) -> None:
    """Every running pod's IP: unique, recorded by a PodIP on the pod's node, owned in the
    cloud by an ENI of that node's instance."""
    ips = [p["status"]["podIP"] for p in pods]
    assert len(ips) == len(set(ips)), f"duplicate pod IPs: {collections.Counter(ips)}"
    podips = {(pi["metadata"]["namespace"], pi["metadata"]["name"]): pi for pi in box.podips()}
    cloud = _cloud_ips_by_eni(box)
    enis = {e["metadata"]["name"]: e for e in box.enis()}
    for p in pods:
        key = (p["metadata"]["namespace"], p["metadata"]["name"])
        assert key in podips, f"no PodIP for {key}"
        spec = podips[key]["spec"]
        node = p["spec"]["nodeName"]
        assert spec["ip"] == p["status"]["podIP"]
        assert spec["nodeName"] == node
        eni = enis[spec["eniId"]]
        assert eni["spec"]["nodeName"] == node
        assert eni["spec"]["instanceId"] == box.node_by_name[node].instance_id
        assert spec["ip"] in cloud[spec["eniId"]], f"{spec['ip']} not on {spec['eniId']}"


def test_pods_get_node_enis_addresses_and_talk(box: ClusterBox) -> None:
    box.deployment("talk", 6)
    pods = _running(box, "talk", 6)
    _assert_consistent(box, pods)
    by_node: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for p in pods:
        by_node[p["spec"]["nodeName"]].append(p)
    assert len(by_node) >= 2, "the scheduler should spread the pods"
    nodes = sorted(by_node)
    for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        src, dst = by_node[a][0], by_node[b][-1]
        assert box.ping(src, dst["status"]["podIP"], count=2), f"{a} -> {b}"
    for node in nodes:  # every pod reaches its own node's primary address
        assert box.ping(by_node[node][0], box.node_by_name[node].primary_ip)

    box.kube.kubectl("delete", "deployment", "talk")
    wait_for(lambda: not box.pods("app=talk"), 120, "pods gone")
    wait_for(lambda: not [pi for pi in box.podips()
                          if pi["metadata"]["name"].startswith("talk-")], 60, "PodIPs gone")


def test_scale_past_one_eni_and_back(box: ClusterBox) -> None:
    box.deployment("scale", 20)
    pods = _running(box, "scale", 20, 300)
    _assert_consistent(box, pods)
    enis = box.enis()
    for node in NODES:  # limits never exceeded
        pool = box.pools()[node.name]
        limits = pool["status"]["limits"]
        mine = [e for e in enis if e["spec"]["nodeName"] == node.name]
        assert len(mine) <= limits["enis"]
        for e in mine:
            assert len(e.get("status", {}).get("ips", [])) <= limits["ipsPerENI"] - 1
    box.scale("scale", 2)
    _running(box, "scale", 2)
    wait_for(lambda: all(p.get("status", {}).get("counts", {}).get("free", 99) <= 5
                         for p in box.pools().values()), 180, "pools trimmed to max_pool_size")
    box.kube.kubectl("delete", "deployment", "scale")
    wait_for(lambda: not box.pods("app=scale"), 120, "pods gone")


def test_operator_and_agent_killed_and_restarted_lose_nothing(box: ClusterBox) -> None:
    victim = "e2e-c"
    box.deployment("crash", 12)
    wait_for(lambda: len(box.running_pods("app=crash")) >= 3, 120, "some pods up")
    box.stop_operator(signal.SIGKILL)
    box.stop_agent(victim, signal.SIGKILL)
    box.start_agent(victim)
    box.start_operator()
    pods = _running(box, "crash", 12, 300)
    _assert_consistent(box, pods)
    box.kube.kubectl("delete", "deployment", "crash")
    wait_for(lambda: not box.pods("app=crash"), 120, "pods gone")
    wait_for(lambda: not [pi for pi in box.podips()
                          if pi["metadata"]["name"].startswith("crash-")], 90, "PodIPs gone")


def test_node_deletion_takes_its_enis(box: ClusterBox) -> None:
    node = box.node_by_name["e2e-b"]
    assert box.cloud is not None
    provider = box.cloud.provider()

    def secondary() -> list[Any]:
        return [e for e in provider.describe_enis(instance_id=node.instance_id)
                if e.type != "Primary"]
    assert secondary(), "the node should hold ENIs before deletion"
    assert node.kubelet is not None
    node.kubelet.stop(teardown=True)
    box.kube.kubectl("delete", "node", node.name)
    wait_for(lambda: not secondary(), 180, "the node's ENIs detached")
    wait_for(lambda: not provider.describe_enis(tags={contract.TAG_NODE: node.name}),
             180, "the node's ENIs deleted")
    wait_for(lambda: node.name not in box.pools(), 60, "ENIPool gone")
    wait_for(lambda: not [e for e in box.enis() if e["spec"]["nodeName"] == node.name], 60,
             "ENI resources gone")
