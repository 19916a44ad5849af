"""The node agent end to end on a real emulated node: real netns, real netlink, the real
API server, the installed CNI shim. The operator is a test double writing ENI/ENIPool
objects exactly as the contract says."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import NodeEnv, make_node_env, sh, teardown_node_env, wait_for

from cni_plugin import contract
from cni_plugin.shim import call_agent
from localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeEnv]:
    e = make_node_env(cluster, tmp_path_factory.mktemp("node"), ips_per_eni=3)
    try:
        yield e
    finally:
        teardown_node_env(e)


class Pods:
    """Pods added in a test; every one is deleted (and its netns removed) at the end."""

    def __init__(self, env: NodeEnv) -> None:
        self.env = env
        self.live: dict[str, tuple[str, tuple[str, str, str]]] = {}
        self.n = 0

    def add(self, name: str | None = None, expect_ok: bool = True, **kw: object) -> str:
        self.n += 1
        name = name or f"pod{self.n}-{time.monotonic_ns() % 100000}"
        netns = self.env.net.pod_netns()
        cid = f"cid-{name}"
        # A real Pod object, so GC (grace 2 s here) sees the pod alive.
        ident = ("default", name, self.env.op.create_pod("default", name))
        r = self.env.shim.add(cid, netns, pod=ident, **kw)
        self.live[cid] = (netns, ident)
        if expect_ok:
            assert r.rc == 0, (r, self.env.agent.tail())
            return r.ip
        return ""

    def delete(self, cid: str) -> None:
        netns, ident = self.live.pop(cid)
        r = self.env.shim.delete(cid, netns, pod=ident)
        assert r.rc == 0, r
        self.env.net.remove_pod_netns(netns)
        if ident[1]:
            self.env.op.delete_pod(ident[0], ident[1])

    def delete_all(self) -> None:
        for cid in list(self.live):
            self.delete(cid)


@pytest.fixture
def pods(env: NodeEnv) -> Iterator[Pods]:
    p = Pods(env)
    try:
        yield p
    finally:
        p.delete_all()
        wait_for(lambda: env.pod_artifacts() == [], 10, "no pod artifacts left")


def eni_ifindex(env: NodeEnv, ifname: str) -> int:
    return int(env.net.node(f"-o link show {ifname}").stdout.split(":")[0])


def test_pods_on_each_eni_reach_each_other_the_node_and_the_gateway(
        env: NodeEnv, pods: Pods) -> None:
    ips = [pods.add() for _ in range(4)]
    n = env.net.n
    assert ips == [f"10.{n}.0.101", f"10.{n}.0.102", f"10.{n}.0.103", f"10.{n}.0.201"]
    netns = {ip: ns for ip, (ns, _) in zip(ips, pods.live.values(), strict=True)}
    t1, t2 = (contract.eni_table(eni_ifindex(env, f"eth{i}")) for i in (1, 2))

    rules = env.net.node("rule show").stdout
    for ip, table in ((ips[0], t1), (ips[3], t2)):
        assert re.search(rf"^512:\s+from all to {re.escape(ip)} lookup main", rules, re.M), rules
        assert re.search(rf"^2048:\s+from {re.escape(ip)} lookup {table}", rules, re.M), rules
    for i, table in ((1, t1), (2, t2)):
        route = env.net.node(f"route show table {table}").stdout
        assert f"default via {env.net.gateway} dev eth{i}" in route and "onlink" in route
        assert "state UP" in env.net.node(f"link show eth{i}").stdout
    host_routes = env.net.node("route show table main").stdout
    for ip in ips:
        assert re.search(rf"^{re.escape(ip)} dev eni[0-9a-f]{{11}} .*scope link", host_routes,
                         re.M), host_routes
    pod_ns = netns[ips[0]]
    inside = sh(f"ip -n {pod_ns} -4 addr show eth0").stdout
    assert f"inet {ips[0]}/32" in inside
    assert re.search(r"^default via 169\.254\.1\.1 dev eth0 .*onlink",
                     sh(f"ip -n {pod_ns} route").stdout, re.M)
    neigh = sh(f"ip -n {pod_ns} neigh show 169.254.1.1").stdout
    assert "PERMANENT" in neigh

    a, b = netns[ips[0]], netns[ips[3]]  # ENI 1 and ENI 2
    assert env.net.ping(a, ips[3]) and env.net.ping(b, ips[0])  # pod <-> pod across ENIs
    assert env.net.ping(a, ips[1])  # same ENI
    assert env.net.ping(a, env.net.node_ip) and env.net.ping(b, env.net.node_ip)  # node
    assert env.net.ping(a, env.net.gateway) and env.net.ping(b, env.net.gateway)  # VPC gw

    # Egress leaves through the ENI that owns the source IP.
    for src, owner, other in ((a, "eth1", "eth2"), (b, "eth2", "eth1")):
        before = env.net.tx_packets(owner), env.net.tx_packets(other)
        assert env.net.ping(src, env.net.gateway, count=5)
        after = env.net.tx_packets(owner), env.net.tx_packets(other)
        assert after[0] - before[0] >= 5, (owner, before, after)
        assert after[1] == before[1], (other, before, after)

    # PodIPs and status.agent follow (asynchronously).
    wait_for(lambda: {v["ip"] for v in env.op.podips().values()} >= set(ips), 15, "PodIPs")
    spec = env.op.podips()[f"default/{pods.live[next(iter(pods.live))][1][1]}"]
    assert spec["nodeName"] == env.agent.node and spec["eniId"] == env.net.enis[1].id
    wait_for(lambda: set(env.op.agent_status().get("allocated", [])) == set(ips), 15,
             "status.agent.allocated")

    pods.delete_all()
    wait_for(lambda: env.pod_artifacts() == [], 10, "every rule, route and link gone")
    rules = env.net.node("rule show").stdout
    # local, main, default, and the node's own rule for hostPort replies: no pod rule left
    assert rules.count("lookup") == 4 and "1024:\tfrom all fwmark 0x80/0x80 lookup main" in rules
    wait_for(lambda: not env.op.podips(), 15, "PodIPs deleted")
    wait_for(lambda: env.op.agent_status().get("allocated") == [], 15, "allocated emptied")


def test_add_is_idempotent_check_detects_and_gc_repairs(env: NodeEnv, pods: Pods) -> None:
    ip = pods.add("same")
    cid, (netns, ident) = next(iter(pods.live.items()))
    again = env.shim.add(cid, netns, pod=ident)
    assert again.rc == 0 and again.ip == ip
    prev = again.out
    check = env.shim.run("CHECK", cid, f"/run/netns/{netns}", pod=ident,
                         conf=env.shim.conf(prevResult=prev))
    assert check.rc == 0, check
    table = contract.eni_table(eni_ifindex(env, "eth1"))
    env.net.node(f"rule del pref 2048 from {ip} lookup {table}")
    check = env.shim.run("CHECK", cid, f"/run/netns/{netns}", pod=ident,
                         conf=env.shim.conf(prevResult=prev))
    assert check.rc == 1 and check.out["code"] == contract.ERR_DATAPATH
    assert "rule 2048" in check.out["msg"]
    wait_for(lambda: env.shim.run("CHECK", cid, f"/run/netns/{netns}", pod=ident,
                                  conf=env.shim.conf(prevResult=prev)).rc == 0, 10,
             "GC pass re-adding the rule")
    assert env.shim.delete(cid, netns, pod=ident).rc == 0
    assert env.shim.delete(cid, netns, pod=ident).rc == 0  # DEL twice
    r = env.shim.run("CHECK", cid, f"/run/netns/{netns}", pod=ident,
                     conf=env.shim.conf(prevResult=prev))
    assert r.rc == 1 and r.out["code"] == contract.ERR_UNKNOWN_CONTAINER


@pytest.mark.parametrize("version", contract.CNI_SUPPORTED_VERSIONS)
def test_results_in_the_version_asked(env: NodeEnv, pods: Pods, version: str) -> None:
    netns = env.net.pod_netns()
    r = env.shim.add("v-" + version, netns, conf=env.shim.conf(version))
    pods.live["v-" + version] = (netns, ("", "", ""))
    assert r.rc == 0, r
    assert r.out["cniVersion"] == version
    assert ("version" in r.out["ips"][0]) == version.startswith("0.")


def test_bad_inputs_get_codes_and_leak_nothing(env: NodeEnv, pods: Pods) -> None:
    assert env.pod_artifacts() == []
    before = env.agent.status()["counts"]
    r = env.shim.add("ghost", "no-such-netns")
    assert r.rc == 1 and r.out["code"] == contract.ERR_INVALID_ENV
    assert "does not exist" in r.out["msg"]
    # The pod exists with a live sandbox: a second sandbox must wait for its DEL.
    pods.add("busy")
    other = env.net.pod_netns()
    r = env.shim.add("cid-busy-2", other, pod=("default", "busy", "uid-busy"))
    env.net.remove_pod_netns(other)
    assert r.rc == 1 and r.out["code"] == contract.ERR_TRY_AGAIN
    assert "default/busy" in r.out["msg"]
    # Exhaust the pool (6 IPs in all), then one more.
    for _ in range(5):
        pods.add()
    netns = env.net.pod_netns()
    r = env.shim.add("one-too-many", netns, pod=("default", "extra", "uid-x"))
    env.net.remove_pod_netns(netns)
    assert r.rc == 1 and r.out["code"] == contract.ERR_NO_FREE_IP, r
    assert "no free IP on node" in r.out["msg"] and env.agent.node in r.out["msg"]
    assert len([a for a in env.pod_artifacts() if a.startswith("record")]) == 6
    pods.delete_all()
    wait_for(lambda: env.pod_artifacts() == [], 10, "nothing left")
    after = env.agent.status()["counts"]
    assert (after["total"], after["allocated"]) == (before["total"], 0)
    assert env.agent.metric("eniway_cni_errors_total", 'code="100"') >= 1


FORBIDDEN_INPUTS = [  # (what, wire fields replaced, shim env replaced)
    ("container id with a newline", {"containerId": "abc\ndef"}, {"CNI_CONTAINERID": "abc\ndef"}),
    ("container id starting with '-'", {"containerId": "-abc"}, {"CNI_CONTAINERID": "-abc"}),
    ("container id with '/'", {"containerId": "../../x"}, {"CNI_CONTAINERID": "../../x"}),
    ("interface name too long", {"ifname": "eth0123456789012"},
     {"CNI_IFNAME": "eth0123456789012"}),
    ("interface name with '/'", {"ifname": "et/h0"}, {"CNI_IFNAME": "et/h0"}),
    ("interface name '..'", {"ifname": ".."}, {"CNI_IFNAME": ".."}),
    ("interface name with a space", {"ifname": "eth 0"}, {"CNI_IFNAME": "eth 0"}),
    ("relative netns path", {"netns": "run/netns/x"}, {"CNI_NETNS": "run/netns/x"}),
    ("netns path with a newline", {"netns": "/run/netns/x\ny"}, {"CNI_NETNS": "/run/netns/x\ny"}),
    ("pod name with a newline", {"podName": "a\nb"},
     {"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a\nb;K8S_POD_UID=u1"}),
    ("pod namespace in capitals", {"podNamespace": "Default"},
     {"CNI_ARGS": "K8S_POD_NAMESPACE=Default;K8S_POD_NAME=a;K8S_POD_UID=u1"}),
    ("malformed CNI_ARGS", None, {"CNI_ARGS": "K8S_POD_NAMESPACE=default;garbage"}),
    ("container id not a string", {"containerId": 7}, None),
]


def _store_bytes(env: NodeEnv) -> dict[str, bytes]:
    adir = Path(env.agent.state_dir) / contract.STORE_ALLOC_DIR
    return {p.name: p.read_bytes() for p in sorted(adir.iterdir())}


def test_input_the_cni_spec_forbids_is_refused_and_never_stored(env: NodeEnv,
                                                                pods: Pods) -> None:
    """Code 4 from the shim and from the agent's socket itself (anything on the node may
    call it); the store, the links and the pool are exactly as before."""
    pods.add("keeper")  # one record that must stay byte for byte
    before, links = _store_bytes(env), env.pod_artifacts()
    counts = env.agent.status()["counts"]
    netns = env.net.pod_netns()
    try:
        for what, wire, shim_env in FORBIDDEN_INPUTS:
            for command in ("ADD", "CHECK", "DEL"):
                if wire is not None:
                    req = {"command": command, "containerId": "cid-ok", "ifname": "eth0",
                           "netns": f"/run/netns/{netns}", "podNamespace": "default",
                           "podName": "ok", "podUID": "u1", **wire}
                    answer = call_agent(env.agent.socket, req, 10)
                    assert answer["ok"] is False, (what, command, answer)
                    assert answer["code"] == contract.ERR_INVALID_ENV, (what, command, answer)
                if shim_env is not None:
                    r = env.shim.run(command, "cid-ok", f"/run/netns/{netns}",
                                     pod=("default", "ok", "u1"), env=shim_env)
                    assert (r.rc, r.out.get("code")) == (1, contract.ERR_INVALID_ENV), (
                        what, command, r)
                    assert r.out["msg"].startswith("eniway: "), r.out
        assert _store_bytes(env) == before
        assert env.pod_artifacts() == links
        assert env.agent.status()["counts"] == counts
    finally:
        env.net.remove_pod_netns(netns)


def test_concurrent_add_for_the_same_pod_is_refused(env: NodeEnv, pods: Pods) -> None:
    results = []
    nss = [env.net.pod_netns() for _ in range(6)]
    uid = env.op.create_pod("default", "racer")

    def go(i: int) -> None:
        results.append((i, env.shim.add(f"race-{i}", nss[i], pod=("default", "racer", uid))))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [(i, r) for i, r in results if r.rc == 0]
    refused = [r for _, r in results if r.rc != 0]
    assert len(ok) == 1, results
    assert all(r.out["code"] == contract.ERR_TRY_AGAIN for r in refused), refused
    for i, _ in ok:
        pods.live[f"race-{i}"] = (nss[i], ("default", "racer", uid))
    for i in range(6):
        if f"race-{i}" not in pods.live:
            env.net.remove_pod_netns(nss[i])
    assert len([a for a in env.pod_artifacts() if a.startswith("link")]) == 1


def test_release_handshake(env: NodeEnv, pods: Pods) -> None:
    n = env.net.n
    held = pods.add()
    assert held == f"10.{n}.0.101"
    free = f"10.{n}.0.102"
    token = env.op.release([held, free])
    wait_for(lambda: env.op.agent_status().get("acknowledged") == [free], 15, "ack of free IP")
    assert env.op.agent_status()[contract.AGENT_RELEASE_TOKEN] == token  # bound to the request
    got = [pods.add() for _ in range(4)]  # 6 IPs, 1 held, 1 being released: 4 more
    assert free not in got and held not in got
    netns = env.net.pod_netns()
    r = env.shim.add("blocked", netns)
    env.net.remove_pod_netns(netns)
    assert r.rc == 1 and r.out["code"] == contract.ERR_NO_FREE_IP
    assert env.op.agent_status()["acknowledged"] == [free]  # a held IP is never acknowledged
    env.op.release([held])  # operator dropped `free` without unassigning: usable again
    wait_for(lambda: env.op.agent_status().get("acknowledged") == [], 15, "ack withdrawn")
    assert pods.add() == free
    first = next(iter(pods.live))
    pods.delete(first)  # the pod holding `held` goes away: now it can be acknowledged
    wait_for(lambda: env.op.agent_status().get("acknowledged") == [held], 15, "ack of held")
    env.op.release([])


def test_gc_reclaims_allocations_whose_pod_or_netns_is_gone(env: NodeEnv) -> None:
    uid = env.op.create_pod("default", "gcpod")
    netns = env.net.pod_netns()
    r = env.shim.add("cid-gc", netns, pod=("default", "gcpod", uid))
    assert r.rc == 0
    wait_for(lambda: "default/gcpod" in env.op.podips(), 10, "PodIP")
    time.sleep(3)  # older than the grace period; the pod exists, so GC keeps it
    assert any(a == f"record {r.ip}" for a in env.pod_artifacts())
    env.op.delete_pod("default", "gcpod")
    wait_for(lambda: env.pod_artifacts() == [], 15, "GC of the deleted pod's allocation")
    wait_for(lambda: "default/gcpod" not in env.op.podips(), 10, "PodIP deleted by GC")
    env.net.remove_pod_netns(netns)
    # A sandbox whose netns vanished without a DEL (no pod identity at all).
    netns = env.net.pod_netns()
    r = env.shim.add("cid-lost", netns)
    assert r.rc == 0
    env.net.remove_pod_netns(netns)
    wait_for(lambda: env.pod_artifacts() == [], 15, "GC of the netns-less allocation")
    assert env.agent.metric("eniway_gc_reclaimed_total", 'reason="pod-gone"') >= 1
    assert env.agent.metric("eniway_gc_reclaimed_total", 'reason="netns-gone"') >= 1


def test_agent_down_add_fails_fast_del_still_cleans_then_restart(env: NodeEnv) -> None:
    netns = env.net.pod_netns()
    ident = ("default", "survivor", "uid-s")
    kept = env.shim.add("cid-kept", netns, pod=ident)
    netns2 = env.net.pod_netns()
    gone = env.shim.add("cid-gone", netns2, pod=("default", "leaver", "uid-l"))
    assert kept.rc == 0 and gone.rc == 0
    env.agent.stop(signal.SIGKILL)
    try:
        netns3 = env.net.pod_netns()
        r = env.shim.add("cid-new", netns3)
        env.net.remove_pod_netns(netns3)
        assert r.rc == 1 and r.out["code"] == contract.ERR_TRY_AGAIN
        assert "not reachable" in r.out["msg"]
        r = env.shim.delete("cid-gone", netns2, pod=("default", "leaver", "uid-l"))
        assert r.rc == 0, r
        left = env.pod_artifacts()
        assert not [a for a in left if gone.ip in a], left
        assert env.shim.delete("cid-gone", netns2).rc == 0
        env.net.remove_pod_netns(netns2)
    finally:
        env.agent.start()
    counts = env.agent.status()["counts"]
    assert counts["allocated"] == 1 and counts["total"] == 6
    assert env.net.ping(netns, env.net.gateway)  # the survivor kept its wiring
    assert env.shim.delete("cid-kept", netns, pod=ident).rc == 0
    env.net.remove_pod_netns(netns)
    wait_for(lambda: env.pod_artifacts() == [], 10, "clean")


def test_agent_memory_and_health(env: NodeEnv) -> None:
    assert env.agent.http("/healthz")[0] == 200
    _, body = env.agent.http("/metrics")
    for name in ("eniway_pool_ips", "eniway_cni_request_duration_seconds_bucket",
                 "eniway_enis_ready"):
        assert name in body
    assert env.agent.metric("eniway_enis_ready") == 2
    print(f"agent peak RSS {env.agent.rss_kb() / 1024:.1f} MB")


def test_cni_gc_and_status(env: NodeEnv, pods: Pods) -> None:
    keep = pods.add("keeper")
    drop = pods.add("dropped")
    status = env.shim.run("STATUS", conf=env.shim.conf("1.1.0"))
    assert status.rc == 0, status
    cids = list(pods.live)
    r = env.shim.run("GC", conf=env.shim.conf("1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": cids[0], "ifname": "eth0"}]}))
    assert r.rc == 0, r
    left = env.pod_artifacts()
    assert f"record {keep}" in left and f"record {drop}" not in left
    assert not [a for a in left if drop in a], left
