"""Network mode with real packets: VPC namespace, gateway, ENI veths with the ENI's MAC
plugged on attach, /32 routes per assigned IP, and the source/destination check."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from typing import Any

import pytest

from eniway_cloudsim.netmode import NFT_TABLE, NetMode
from eniway_cloudsim.testing import SimHandle, start_in_process
from eniway_operator import testing

pytestmark = pytest.mark.netns
ZONE = "cn-hangzhou-i"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def ping(ns: str, dst: str, src: str = "") -> bool:
    args = ["ping", "-c", "1", "-W", "1", "-n", "-q"]
    if src:
        args += ["-I", src]
    return in_ns(ns, *args, dst, check=False).returncode == 0


def link_by_mac(ns: str, mac: str) -> str | None:
    for link in json.loads(sh("ip", "-n", ns, "-j", "link", "show").stdout):
        if link.get("address") == mac:
            return str(link["ifname"])
    return None


def wait_for(pred: Any, what: str, timeout: float = 10.0) -> Any:
    return testing.wait_for(pred, timeout, what, 0.05)


def route_secondary(ns: str, dev: str, ip: str, gw: str) -> None:
    """What the agent does for a pod IP on a secondary ENI: the IP on the ENI, and a
    policy route sending its traffic out of that ENI."""
    for key in ("net.ipv4.conf.all.rp_filter=0", f"net.ipv4.conf.{dev}.rp_filter=0"):
        in_ns(ns, "sysctl", "-q", "-w", key)
    sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", dev)
    sh("ip", "-n", ns, "rule", "add", "from", ip, "lookup", "100")
    sh("ip", "-n", ns, "route", "add", "default", "via", gw, "dev", dev, "onlink",
       "table", "100")


def test_vpc_network_with_real_packets(netsim: tuple[SimHandle, str]) -> None:
    sim, tag = netsim
    topo = sim.admin.bootstrap({ZONE: ["10.50.0.0/24"]})
    vsw = topo.vswitch_ids(ZONE)[0]
    gw = "10.50.0.253"
    ns_a, ns_b = f"{tag}-node-a", f"{tag}-node-b"
    a = sim.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id], netns=ns_a)
    b = sim.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id], netns=ns_b)
    vpc_ns = f"{tag}-{topo.vpc_id}"
    assert os.path.exists(f"/run/netns/{vpc_ns}")

    # the primary ENI is eth0 with the ENI's MAC, configured as DHCP would
    primary_mac = a["enis"][0]["mac"]
    assert link_by_mac(ns_a, primary_mac) == "eth0"
    assert f"{a['primary_ip']}/24" in sh("ip", "-n", ns_a, "-4", "addr", "show", "eth0").stdout
    assert ping(ns_a, gw)
    assert ping(ns_a, b["primary_ip"])

    p = sim.provider()
    eni = p.create_eni(vsw, [topo.security_group_id], {})
    assert link_by_mac(ns_a, eni.mac) is None
    p.attach_eni(eni.eni_id, a["instance_id"])
    dev = wait_for(lambda: link_by_mac(ns_a, eni.mac), "ENI veth in the node namespace")
    assert dev == "eth1"
    s1, s2 = p.assign_ips(eni.eni_id, 2)

    # node A: the secondary IP on the ENI, with a policy route out of that ENI
    route_secondary(ns_a, dev, s1, gw)
    assert ping(ns_b, s1), "a secondary IP is reachable through its ENI"

    # source/destination check: the same reply sent out of the primary ENI is dropped
    sh("ip", "-n", ns_a, "route", "replace", "default", "via", gw, "dev", "eth0", "onlink",
       "table", "100")
    assert not ping(ns_b, s1), "a packet from s1 leaving the wrong ENI must be dropped"
    counters = in_ns(vpc_ns, "nft", "-j", "list", "table", "ip", NFT_TABLE).stdout
    assert '"packets": 0' not in counters.split('"counter"')[1][:60]
    sh("ip", "-n", ns_a, "route", "replace", "default", "via", gw, "dev", dev, "onlink",
       "table", "100")
    assert ping(ns_b, s1)

    # an address the ENI does not own is dropped even on the right ENI
    rogue = "10.50.0.200"
    sh("ip", "-n", ns_a, "addr", "add", f"{rogue}/32", "dev", dev)
    sh("ip", "-n", ns_a, "rule", "add", "from", rogue, "lookup", "100")
    assert not ping(ns_a, b["primary_ip"], src=rogue)
    assert ping(ns_a, b["primary_ip"], src=s1)

    # unassigning removes the route: s1 is no longer reachable; s2 still routes to node A
    p.unassign_ips(eni.eni_id, [s1])
    assert not ping(ns_b, s1)
    routes = sh("ip", "-n", vpc_ns, "route").stdout
    assert s2 in routes and s1 not in routes

    # detach unplugs the veth; release removes the namespace the emulator created
    p.detach_eni(eni.eni_id, a["instance_id"])
    wait_for(lambda: link_by_mac(ns_a, eni.mac) is None, "ENI veth removed on detach")
    sim.admin.release(a["instance_id"])
    assert not os.path.exists(f"/run/netns/{ns_a}")
    assert ping(ns_b, gw)


def test_network_is_rebuilt_after_restart(root: None, tmp_path: Any) -> None:
    tag = "cst" + secrets.token_hex(3)
    state = str(tmp_path / "net.db")
    first = start_in_process(state=state, network=NetMode(prefix=tag + "-"))
    second = None
    try:
        topo = first.admin.bootstrap({ZONE: ["10.51.0.0/24"]})
        vsw = topo.vswitch_ids(ZONE)[0]
        ns_a, ns_b = f"{tag}-a", f"{tag}-b"
        a = first.admin.create_instance("ecs.g6.large", vsw, [topo.security_group_id],
                                        netns=ns_a)
        b = first.admin.create_instance("ecs.g6.large", vsw, [topo.security_group_id],
                                        netns=ns_b)
        first.close(teardown_network=True)  # the kernel side is gone...
        assert not os.path.exists(f"/run/netns/{ns_a}")
        second = start_in_process(state=state, network=NetMode(prefix=tag + "-"))
        assert ping(ns_a, b["primary_ip"])  # ...and rebuilt from the saved state
        assert link_by_mac(ns_b, b["enis"][0]["mac"]) == "eth0"
        assert a["primary_ip"] != b["primary_ip"]
    finally:
        if second is not None:
            second.close(teardown_network=True)
        for ns in sh("ip", "netns", "list").stdout.split():
            if ns.startswith(tag):
                sh("ip", "netns", "del", ns, check=False)
