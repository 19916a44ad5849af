"""Pods on the primary ENI (EC2's rule) with real packets: the emulator's VPC in network
mode (its source/destination check drops a packet that leaves the wrong ENI), the node
agent's core and datapath in process, fed ENI resources as the operator writes them."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_plugin import contract
from cni_plugin.agent.core import AgentConfig, NodeAgent
from cni_plugin.agent.datapath import Datapath
from cni_plugin.agent.metrics import Metrics
from eniway_cloudsim.testing import SimHandle
from eniway_operator import testing
from eniway_operator.cloud.base import NetworkInterface, VSwitch

pytestmark = pytest.mark.netns
ZONE = "cn-hangzhou-i"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def ping(ns: str, dst: str) -> bool:
    return sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-n", "-q", dst,
              check=False).returncode == 0


def resource(node: str, e: NetworkInterface, vsw: VSwitch) -> dict[str, Any]:
    """The ENI resource the reconciler records (the fields the agent reads)."""
    return {"metadata": {"name": e.eni_id},
            "spec": {"nodeName": node, "primary": e.type == "Primary", "macAddress": e.mac,
                     "vSwitchId": vsw.vswitch_id, "vSwitchCidr": vsw.cidr,
                     "gatewayIP": vsw.gateway, "primaryIP": e.primary_ip},
            "status": {"phase": contract.PHASE_INUSE,
                       "ips": [{"ip": ip, "state": contract.IP_FREE} for ip in e.private_ips]}}


class Node:
    """One instance's network namespace served by an in-process agent."""

    def __init__(self, name: str, netns: str, workdir: Path) -> None:
        self.name, self.netns = name, netns
        self.agent = NodeAgent(AgentConfig(node_name=name, state_dir=str(workdir / name),
                                           socket_path=str(workdir / f"{name}.sock"),
                                           host_netns=netns, cooldown=0),
                               Datapath(netns), Metrics())
        self.agent.start()
        self.pods: dict[str, str] = {}  # container id -> pod netns

    def serve(self, resources: list[dict[str, Any]]) -> None:
        self.agent.set_enis(resources)
        self.agent.set_release([])

    def add(self, pod_ns: str) -> dict[str, Any]:
        sh("ip", "netns", "add", pod_ns)
        cid = f"cid-{pod_ns}"
        answer = self.agent.handle({
            "command": contract.WIRE_ADD, "containerId": cid, "ifname": "eth0",
            "netns": f"/run/netns/{pod_ns}", "podNamespace": "default", "podName": pod_ns,
            "podUID": f"uid-{pod_ns}"})
        assert answer["ok"], answer
        self.pods[cid] = pod_ns
        return dict(answer["result"])

    def delete_all(self) -> None:
        for cid, pod_ns in list(self.pods.items()):
            answer = self.agent.handle({"command": contract.WIRE_DEL, "containerId": cid,
                                        "ifname": "eth0", "netns": f"/run/netns/{pod_ns}"})
            assert answer["ok"], answer
            del self.pods[cid]
        self.agent.drain()

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.netns, *args).stdout

    def primary_link(self) -> tuple[Any, ...]:
        """What the node's own use of its primary ENI rests on."""
        link = json.loads(self.ip("-j", "addr", "show", "eth0"))[0]
        return (link["mtu"], link["operstate"], [a["local"] for a in link["addr_info"]],
                self.ip("route", "show", "default"))


def tcp_via_hostport(server_ns: str, node: Node, node_ip: str, client_ns: str,
                     pod_ip: str, port: int) -> str:
    """A connection to ``node_ip:port`` DNATed to the pod (as a hostPort is), answered."""
    rule = ["PREROUTING", "-p", "tcp", "--dport", str(port), "-j", "DNAT",
            "--to-destination", f"{pod_ip}:8080"]
    sh("ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-t", "nat", "-A", *rule)
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "python3", "-c", textwrap.dedent("""
            import socket
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", 8080)); s.listen(1); s.settimeout(10)
            c, _ = s.accept(); c.sendall(b"hello from the pod"); c.close()
            """)])
    try:
        time.sleep(0.3)
        client = sh("ip", "netns", "exec", client_ns, "python3", "-c", textwrap.dedent(f"""
            import socket
            c = socket.create_connection(("{node_ip}", {port}), timeout=3)
            print(c.recv(100).decode())
            """), check=False)
        return client.stdout.strip()
    finally:
        server.kill()
        server.wait()
        sh("ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-t", "nat", "-D", *rule)


@pytest.fixture
def nodes(netsim: tuple[SimHandle, str]) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for n in made:
        n.delete_all()
        n.agent.store.close()


def test_pods_on_the_primary_eni_reach_other_nodes_and_are_reached(
        netsim: tuple[SimHandle, str], tmp_path: Path, nodes: list[Node]) -> None:
    handle, tag = netsim
    topo = handle.admin.bootstrap({ZONE: ["10.62.0.0/24"]})
    vsw_id = topo.vswitch_ids(ZONE)[0]
    p = handle.provider()
    vsw = p.describe_vswitches([vsw_id])[0]
    ns_a, ns_b = f"{tag}-node-a", f"{tag}-node-b"
    a = handle.admin.create_instance("ecs.g6.xlarge", vsw_id, [topo.security_group_id],
                                     netns=ns_a)
    b = handle.admin.create_instance("ecs.g6.xlarge", vsw_id, [topo.security_group_id],
                                     netns=ns_b)
    # node A: two pod IPs on its primary ENI, one on a secondary ENI; node B: one on its
    # primary ENI
    prim_a, prim_b = a["enis"][0]["eni_id"], b["enis"][0]["eni_id"]
    p.assign_ips(prim_a, 2)
    p.assign_ips(prim_b, 1)
    sec = p.create_eni(vsw_id, [topo.security_group_id], {})
    p.attach_eni(sec.eni_id, a["instance_id"])
    testing.wait_for(lambda: p.describe_enis([sec.eni_id])[0].status == "InUse", 10,
                     "secondary ENI attached", 0.05)
    p.assign_ips(sec.eni_id, 1)
    enis = {e.eni_id: e for e in p.describe_enis([prim_a, prim_b, sec.eni_id])}

    node_a, node_b = Node("node-a", ns_a, tmp_path), Node("node-b", ns_b, tmp_path)
    nodes += [node_a, node_b]
    sh("ip", "-n", ns_a, "link", "set", "eth0", "mtu", "9001")  # as on EC2: not the agent's
    before = node_a.primary_link()
    node_a.serve([resource("node-a", enis[prim_a], vsw), resource("node-a", enis[sec.eni_id],
                                                                   vsw)])
    node_b.serve([resource("node-b", enis[prim_b], vsw)])
    assert set(node_a.agent.enis) == {prim_a, sec.eni_id}

    got = [node_a.add(f"{tag}-pa{i}") for i in range(3)]
    by_eni = {r["eniId"]: r for r in got}
    assert [r["eniId"] for r in got].count(prim_a) == 2 and sec.eni_id in by_eni
    on_primary, on_secondary = by_eni[prim_a], by_eni[sec.eni_id]
    remote = node_b.add(f"{tag}-pb")
    assert remote["eniId"] == prim_b and remote["ip"] == enis[prim_b].private_ips[0]
    assert on_primary["vSwitchGateway"] == vsw.gateway == "10.62.0.253"

    # the primary ENI's table: default via the gateway the resource names, out of eth0
    table = contract.eni_table(node_a.agent.enis[prim_a].link.index)
    assert f"default via {vsw.gateway} dev eth0" in node_a.ip("route", "show", "table",
                                                              str(table))
    assert f"from {on_primary['ip']} lookup {table}" in node_a.ip("rule", "show")
    # ...and the link the node lives on untouched: MTU, state, address, default route
    assert node_a.primary_link() == before
    assert on_primary["mtu"] == before[0]

    # a pod on the primary ENI and one on a secondary ENI reach a pod and the node of
    # another instance, and are reached from there (the VPC drops any packet that left
    # an ENI not owning its source address)
    pb = node_b.pods[f"cid-{tag}-pb"]
    ns_of = {r["ip"]: node_a.pods[f"cid-{tag}-pa{i}"] for i, r in enumerate(got)}
    pa, ps = ns_of[on_primary["ip"]], ns_of[on_secondary["ip"]]
    for src in (pa, ps):
        assert ping(src, remote["ip"]) and ping(src, b["primary_ip"]) and ping(src, vsw.gateway)
    for ip in (on_primary["ip"], on_secondary["ip"]):
        assert ping(pb, ip) and ping(ns_b, ip)
    assert ping(pa, on_secondary["ip"]) and ping(pa, a["primary_ip"])  # same node
    # a wrong route is what the source check catches: the primary pod's replies sent out
    # of the secondary ENI go nowhere (then back as the agent had it)
    sec_ifname = node_a.agent.enis[sec.eni_id].link.ifname
    sh("ip", "-n", ns_a, "route", "replace", "default", "via", vsw.gateway, "dev", sec_ifname,
       "onlink", "table", str(table))
    assert not ping(pb, on_primary["ip"])
    node_a.serve([resource("node-a", enis[prim_a], vsw), resource("node-a", enis[sec.eni_id],
                                                                   vsw)])
    assert ping(pb, on_primary["ip"])

    # hostPort: a connection to node A's address DNATed to either pod is answered (the
    # connmark rule sends replies back out of the primary ENI)
    for port, (pod_ns, pod) in enumerate(((pa, on_primary), (ps, on_secondary)), 18080):
        assert tcp_via_hostport(pod_ns, node_a, a["primary_ip"], ns_b, pod["ip"],
                                port) == "hello from the pod"

    # DEL: no pod rule, route or veth left; the node's own use of eth0 as it was
    node_a.delete_all()
    rules = node_a.ip("rule", "show")
    assert not [r for r in rules.splitlines() if r.startswith(("512:", "2048:"))], rules
    assert " dev eni" not in node_a.ip("route", "show", "table", "main")
    assert not [link for link in node_a.ip("-o", "link", "show").splitlines()
                if ": eni" in link]
    assert node_a.primary_link() == before
    assert ping(ns_a, b["primary_ip"])
    assert not ping(pb, on_primary["ip"])
