"""End to end on real nodes: the real control plane and scheduler, eniway-cloudsim with its
VPC network, three instances (network namespaces) each made a real node (containerd calling
the installed conflist, kubelet v1.20.2, eniway-agent), and the operator. Pods are busybox
containers; traffic is sent from inside them with ``kubectl exec``. One set of nodes serves
the whole module."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from clusterbox import ClusterBox, NodeSpec, pod_spec, wait_for
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


def _sandboxes(box: ClusterBox, node: str) -> set[str]:
    """Pod sandbox (pause container) ids containerd holds on a node."""
    real = box.node_by_name[node].real
    assert real is not None
    return real.sandboxes()


def _host_net(box: ClusterBox, node: str, *args: str) -> str:
    """``ip ARGS`` in a node's network namespace."""
    return subprocess.run(["ip", "-n", box.node_by_name[node].netns, *args],
                          capture_output=True, text=True, check=True).stdout


def _traces(box: ClusterBox, node: str, ip: str) -> list[str]:
    """Every trace of a pod IP in its node's network: rules, routes (all tables)."""
    found = [line for line in _host_net(box, node, "rule").splitlines() if f" {ip} " in line
             or line.endswith(f" {ip}")]
    found += [line for line in _host_net(box, node, "route", "show", "table", "all")
              .splitlines() if line.split()[:1] == [ip]]
    return found


def _pod_veths(box: ClusterBox, node: str) -> set[str]:
    """The node side of pods' veths (the node's ENIs are veths too: left out)."""
    out = _host_net(box, node, "-o", "link", "show", "type", "veth")
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}
    return {n for n in names if n.startswith(contract.VETH_PREFIX)
            and len(n) == len(contract.VETH_PREFIX) + 11}


def _talk(box: ClusterBox, src: dict[str, Any], dst: dict[str, Any]) -> None:
    ip = dst["status"]["podIP"]
    assert box.ping(src, ip, count=2), f"{src['metadata']['name']} -> {ip}"
    assert (box.fetch(src, f"http://{ip}:8080/") or "").strip() == dst["metadata"]["name"]


def _gone(box: ClusterBox, app: str) -> None:
    box.kube.kubectl("delete", "deployment", app, "--wait=false", check=False)
    box.kube.kubectl("delete", "pods", "-l", f"app={app}", "--grace-period=0", "--force",
                     check=False)
    wait_for(lambda: not box.pods(f"app={app}"), 120, f"{app} pods gone")
    wait_for(lambda: not [pi for pi in box.podips()
                          if pi["metadata"]["name"].startswith(f"{app}-")], 90,
             f"{app} PodIPs gone")


def test_node_capacity_is_enis_max_pods(box: ClusterBox) -> None:
    """kubelet's maxPods, the operator's annotation and the ENIPool's limit agree."""
    pools = box.pools()
    for spec in NODES:
        node = box.get("node", spec.name)
        annotated = wait_for(lambda n=spec.name: box.get("node", n)["metadata"].get(
            "annotations", {}).get(contract.ANNOTATION_MAX_PODS), 60, "max-pods annotation")
        limit = pools[spec.name]["status"]["limits"]["maxPods"]
        assert node["status"]["capacity"]["pods"] == annotated == str(limit), spec.name
        assert node["status"]["allocatable"]["pods"] == str(limit)


def test_pods_get_node_enis_addresses_and_talk(box: ClusterBox) -> None:
    box.deployment("talk", 6)
    pods = box.wait_running("talk", 6)
    _assert_consistent(box, pods)
    by_node: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for p in pods:
        by_node[p["spec"]["nodeName"]].append(p)
    assert len(by_node) >= 2, "the scheduler should spread the pods"
    # ADD came through containerd: each PodIP names the pod's sandbox in the node's containerd
    podips = {pi["metadata"]["name"]: pi["spec"] for pi in box.podips()}
    for p in pods:
        node = p["spec"]["nodeName"]
        assert podips[p["metadata"]["name"]]["containerId"] in _sandboxes(box, node)
    nodes = sorted(by_node)
    for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        _talk(box, by_node[a][0], by_node[b][-1])
    for node in nodes:  # every pod reaches its own node's primary address
        assert box.ping(by_node[node][0], box.node_by_name[node].primary_ip)
    _gone(box, "talk")


def test_host_port_answers_clients_on_other_nodes(box: ClusterBox) -> None:
    """portmap's DNAT on the node's primary address: the pod's replies must leave through
    the primary ENI (connmark), or the VPC's source check drops them on the pod's ENI."""
    server_node, client_node = "e2e-b", "e2e-c"
    veths = {n: _pod_veths(box, n) for n in (server_node, client_node)}
    for name, node, port in (("hp-server", server_node, 30081), ("hp-client", client_node, 0)):
        box.kube.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "hp"}},
            "spec": {**pod_spec(host_port=port),
                     "nodeSelector": {"kubernetes.io/hostname": node}}}))
    pods = {p["metadata"]["name"]: p for p in box.wait_running("hp", 2)}
    primary = box.node_by_name[server_node].primary_ip
    assert pods["hp-server"]["status"]["podIP"] != primary
    body = box.fetch(pods["hp-client"], f"http://{primary}:30081/")
    assert body is not None and body.strip() == "hp-server", body
    body = box.node_fetch(client_node, f"http://{primary}:30081/")  # another node's network
    assert body is not None and body.strip() == "hp-server", body
    box.kube.kubectl("delete", "pods", "-l", "app=hp", "--grace-period=0", "--force")
    wait_for(lambda: not box.pods("app=hp"), 120, "hp pods gone")
    # the sandboxes go after the pod objects: wait for their DELs before the next test
    wait_for(lambda: all(_pod_veths(box, n) == v for n, v in veths.items()), 120,
             "hp pods' veths gone")


def test_pod_delete_frees_the_ip_and_leaves_nothing(box: ClusterBox) -> None:
    """containerd's DEL (with the netns, then again with an empty CNI_NETNS once the
    sandbox is removed) frees the IP; no veth, rule or route is left on the node."""
    node = "e2e-c"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "del-0",
                                                          "labels": {"app": "del"}},
           "spec": {**pod_spec(), "nodeSelector": {"kubernetes.io/hostname": node}}}
    veths = _pod_veths(box, node)
    allocated = box.pools()[node]["status"]["counts"]["allocated"]
    box.kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    victim = box.wait_running("del", 1)[0]
    ip = victim["status"]["podIP"]
    sandbox = next(pi for pi in box.podips() if pi["spec"]["ip"] == ip)["spec"]["containerId"]
    assert sandbox in _sandboxes(box, node)
    assert len(_pod_veths(box, node)) == len(veths) + 1
    assert len(_traces(box, node, ip)) == 3, "rules to and from the pod, and its route"
    box.kube.kubectl("delete", "pod", "del-0")  # graceful, as users do
    wait_for(lambda: sandbox not in _sandboxes(box, node), 120, "sandbox removed")
    wait_for(lambda: not [pi for pi in box.podips() if pi["spec"]["ip"] == ip], 60,
             "PodIP released")
    wait_for(lambda: box.pools()[node]["status"]["counts"]["allocated"] == allocated, 60,
             f"{node} allocation count back to {allocated}")
    assert not _traces(box, node, ip)
    assert _pod_veths(box, node) == veths


def test_kubelet_and_containerd_restart_keep_pods(box: ClusterBox) -> None:
    victim = "e2e-b"
    box.deployment("keep", 6)
    pods = box.wait_running("keep", 6)
    mine = [p for p in pods if p["spec"]["nodeName"] == victim]
    other = next(p for p in pods if p["spec"]["nodeName"] != victim)
    assert mine, "the scheduler should put pods on every node"
    before = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    sandboxes = _sandboxes(box, victim)
    veths = _pod_veths(box, victim)
    real = box.node_by_name[victim].real
    assert real is not None
    real.restart(signal.SIGKILL)
    real.wait_ready()
    # still running, same IPs, same sandboxes (nothing recreated), traffic both ways
    after = {p["metadata"]["name"]: p["status"]["podIP"] for p in box.wait_running("keep", 6)}
    assert after == before
    assert _sandboxes(box, victim) == sandboxes
    for p in mine:
        _talk(box, other, p)
        _talk(box, p, other)
    assert _pod_veths(box, victim) == veths
    _assert_consistent(box, box.wait_running("keep", 6))
    _gone(box, "keep")
    wait_for(lambda: not _pod_veths(box, victim), 60, f"{victim} veths gone")
    for name, ip in before.items():
        assert not _traces(box, next(p for p in pods if p["metadata"]["name"] == name)
                           ["spec"]["nodeName"], ip)





def test_scale_past_one_eni_and_back(box: ClusterBox) -> None:
    box.deployment("scale", 30)
    pods = box.wait_running("scale", 30, 300)
    _assert_consistent(box, pods)
    enis = box.enis()
    for node in NODES:  # limits never exceeded
        pool = box.pools()[node.name]
        limits = pool["status"]["limits"]
        mine = [e for e in enis if e["spec"]["nodeName"] == node.name]
        assert len(mine) <= limits["enis"]
        for e in mine:
            assert len(e.get("status", {}).get("ips", [])) <= limits["ipsPerENI"] - 1
    per_node = collections.Counter(p["spec"]["nodeName"] for p in pods)
    assert any(sum(1 for e in enis if e["spec"]["nodeName"] == n and not e["spec"].get(
        "primary")) > 1 for n in per_node), "30 pods should need a second ENI on some node"
    box.scale("scale", 2)
    box.wait_running("scale", 2)
    wait_for(lambda: all(p.get("status", {}).get("counts", {}).get("free", 99) <= 5
                         for p in box.pools().values()), 180, "pools trimmed to max_pool_size")
    _gone(box, "scale")


def test_operator_and_agent_killed_and_restarted_lose_nothing(box: ClusterBox) -> None:
    victim = "e2e-c"
    box.deployment("crash", 12)
    wait_for(lambda: len(box.running_pods("app=crash")) >= 3, 120, "some pods up")
    box.stop_operator(signal.SIGKILL)
    box.stop_agent(victim, signal.SIGKILL)
    box.start_agent(victim)
    box.start_operator()
    pods = box.wait_running("crash", 12, 300)
    _assert_consistent(box, pods)
    _gone(box, "crash")


def test_node_deletion_takes_its_enis(box: ClusterBox) -> None:
    node = box.node_by_name["e2e-b"]
    assert box.cloud is not None
    provider = box.cloud.provider()

    def secondary() -> list[Any]:
        return [e for e in provider.describe_enis(instance_id=node.instance_id)
                if e.type != "Primary"]
    assert secondary(), "the node should hold ENIs before deletion"
    assert node.real is not None
    node.real.stop()
    box.kube.kubectl("delete", "node", node.name)
    wait_for(lambda: not secondary(), 180, "the node's ENIs detached")
    wait_for(lambda: not provider.describe_enis(tags={contract.TAG_NODE: node.name}),
             180, "the node's ENIs deleted")
    wait_for(lambda: node.name not in box.pools(), 60, "ENIPool gone")
    wait_for(lambda: not [e for e in box.enis() if e["spec"]["nodeName"] == node.name], 60,
             "ENI resources gone")


VPC_CALLS = ("AllocateEipAddress", "AssociateEipAddress", "UnassociateEipAddress",
             "ReleaseEipAddress", "DescribeEipAddresses")


def test_pod_reached_from_the_internet_at_its_eip(box: ClusterBox) -> None:
    """A pod annotated for a public IP: the operator allocates an EIP and associates it
    with the pod's IP (NAT mode); a client in the internet namespace fetches the pod's page
    at the EIP and the pod sees the client's address; the pod's own request to the
    internet arrives from the EIP (it leaves through the pod's ENI); deleting the pod
    releases the EIP. Prints the time from Running to reachable and the VPC calls."""
    import sys
    import time

    from test_cloudsim_internet import SERVER

    from eniway_cloudsim.internet import CLIENT_IP

    assert box.cloud is not None
    box.cloud.admin.reset_call_counts()
    spec = pod_spec()
    spec["containers"][0]["command"] = [
        "sh", "-c", "hostname > /www/index.html; exec httpd -f -v -p 8080 -h /www"]
    box.kube.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pub-0", "labels": {"app": "pub"},
                     "annotations": {contract.ANNOTATION_PUBLIC_IP: "true"}},
        "spec": {**spec, "nodeSelector": {"kubernetes.io/hostname": "e2e-c"}}}))
    pod = box.wait_running("pub", 1)[0]
    running = time.monotonic()

    def public_ip() -> str | None:
        for pi in box.podips():
            if pi["metadata"]["name"] == "pub-0":
                return (pi.get("status") or {}).get("publicIP")
        return None

    eip = wait_for(public_ip, 120, "PodIP status.publicIP")
    body = wait_for(lambda: box.internet_fetch(f"http://{eip}:8080/"), 120,
                    "the pod's page at its EIP from the internet")
    reachable = time.monotonic() - running
    assert body.strip() == "pub-0"
    res = box.kube.kubectl("logs", "pub-0", check=False)
    logs = res.stdout + res.stderr
    assert CLIENT_IP in logs, f"the pod saw another client address: {logs[-500:]}"
    out = box.kube.kubectl("get", "podips").stdout
    assert "PUBLIC-IP" in out.splitlines()[0] and eip in out

    server = subprocess.Popen(["ip", "netns", "exec", box.internet_netns, sys.executable,
                               "-c", SERVER, CLIENT_IP, "8081"])
    try:
        seen = wait_for(lambda: box.fetch(pod, f"http://{CLIENT_IP}:8081/"), 60,
                        "the pod's request on the internet")
        assert seen.strip() == eip, "the pod's traffic must arrive from its EIP"
    finally:
        server.kill()
        server.wait(timeout=10)
    up = {k: v for k, v in box.cloud.admin.call_counts()["calls"].items() if k in VPC_CALLS}

    box.kube.kubectl("delete", "pod", "pub-0")
    wait_for(lambda: not [e for e in box.cloud.admin.state()["eips"]  # type: ignore[union-attr]
                          if e["ip"] == eip], 180, "the EIP released")
    calls = {k: v for k, v in box.cloud.admin.call_counts()["calls"].items()
             if k in VPC_CALLS}
    print(f"\npublic IP: reachable {reachable:.1f}s after Running; VPC calls up to "
          f"reachable {up}, in all {calls}")
    assert calls.get("AllocateEipAddress") == 1 and calls.get("ReleaseEipAddress") == 1
