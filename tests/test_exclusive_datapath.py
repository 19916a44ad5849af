"""Exclusive ENIs with real links: the emulator's ENI link (the cloud's MAC) moves into a
pod's netns and back, follows its ENI from one instance to another, and the VPC routes
and source check follow it."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from cni_plugin.agent.datapath import Datapath, DatapathError
from cni_plugin.agent.exclusive import ExclusiveDatapath, park_name
from eniway_cloudsim.testing import SimHandle
from eniway_operator import testing

pytestmark = pytest.mark.netns
ZONE = "cn-hangzhou-i"
GW = "10.61.0.253"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=check)


def ping(ns: str, dst: str) -> bool:
    return sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "-n", "-q", dst,
              check=False).returncode == 0


def name_of(ns: str, mac: str) -> str | None:
    for link in json.loads(sh("ip", "-n", ns, "-j", "link", "show").stdout):
        if link.get("address") == mac:
            return str(link["ifname"])
    return None


def attached(p: Any, eni_id: str) -> None:
    testing.wait_for(lambda: p.describe_enis([eni_id])[0].status == "InUse", 10,
                     f"{eni_id} InUse", 0.05)


def test_eni_moves_into_pods_and_between_instances(netsim: tuple[SimHandle, str]) -> None:
    handle, tag = netsim
    topo = handle.admin.bootstrap({ZONE: ["10.61.0.0/24"]})
    vsw = topo.vswitch_ids(ZONE)[0]
    ns_a, ns_b = f"{tag}-node-a", f"{tag}-node-b"
    pod_a, pod_b = f"{tag}-pod-a", f"{tag}-pod-b"
    a = handle.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id],
                                     netns=ns_a)
    b = handle.admin.create_instance("ecs.g6.xlarge", vsw, [topo.security_group_id],
                                     netns=ns_b)
    for ns in (pod_a, pod_b):
        sh("ip", "netns", "add", ns)
    p = handle.provider()
    eni = p.create_eni(vsw, [topo.security_group_id], {})
    ex_a = ExclusiveDatapath(Datapath(ns_a))
    ex_b = ExclusiveDatapath(Datapath(ns_b))

    # not attached yet: ADD has nothing to move and says so
    with pytest.raises(DatapathError, match="still attaching"):
        ex_a.move_in(eni.mac, f"/run/netns/{pod_a}", "eth0", eni.primary_ip, 24, GW, 1500)

    p.attach_eni(eni.eni_id, a["instance_id"])
    attached(p, eni.eni_id)  # the agent acts once the cloud says InUse, as here
    assert ex_a.on_node(eni.mac)
    link = ex_a.move_in(eni.mac, f"/run/netns/{pod_a}", "eth0", eni.primary_ip, 24, GW, 1500)
    assert not ex_a.on_node(eni.mac)
    assert name_of(pod_a, eni.mac) == "eth0"
    assert ex_a.check(link, f"/run/netns/{pod_a}") == []
    assert ping(pod_a, b["primary_ip"]), "the pod reaches another instance through its ENI"
    assert ping(ns_b, eni.primary_ip), "and is reached at the ENI's primary IP"
    # ADD again is idempotent; a missing route is repaired by it
    sh("ip", "-n", pod_a, "route", "del", "default")
    assert ex_a.check(link, f"/run/netns/{pod_a}") == [f"default route via {GW} missing"]
    ex_a.move_in(eni.mac, f"/run/netns/{pod_a}", "eth0", eni.primary_ip, 24, GW, 1500)
    assert ex_a.check(link, f"/run/netns/{pod_a}") == []

    # DEL: back on the node, down, bare, parked; DEL again is a no-op
    assert ex_a.move_out(eni.mac, f"/run/netns/{pod_a}") is True
    node_link = sh("ip", "-n", ns_a, "-o", "addr", "show", "dev", park_name(eni.mac),
                   check=False)
    assert node_link.returncode == 0 and "inet " not in node_link.stdout
    assert "state DOWN" in sh("ip", "-n", ns_a, "link", "show", park_name(eni.mac)).stdout
    assert ex_a.move_out(eni.mac, f"/run/netns/{pod_a}") is False
    assert ex_a.move_out(eni.mac, "/run/netns/does-not-exist") is False

    # the ENI moves to instance b: same MAC, same IP, traffic flows again
    p.detach_eni(eni.eni_id, a["instance_id"])
    testing.wait_for(lambda: not ex_a.on_node(eni.mac), 10, "ENI gone from node a", 0.05)
    p.attach_eni(eni.eni_id, b["instance_id"])
    attached(p, eni.eni_id)
    assert ex_b.on_node(eni.mac)
    ex_b.move_in(eni.mac, f"/run/netns/{pod_b}", "eth0", eni.primary_ip, 24, GW, 1500)
    assert ping(pod_b, a["primary_ip"])
    assert ping(ns_a, eni.primary_ip)
    # the VPC's source check still holds: another address on the ENI is dropped
    sh("ip", "-n", pod_b, "addr", "add", "10.61.0.201/24", "dev", "eth0")
    assert sh("ip", "netns", "exec", pod_b, "ping", "-c", "1", "-W", "1", "-I", "10.61.0.201",
              a["primary_ip"], check=False).returncode != 0

    # a pod netns deleted with the link inside: DEL still answers, the detach still works
    sh("ip", "netns", "del", pod_b)
    assert ex_b.move_out(eni.mac, f"/run/netns/{pod_b}") is False
    p.detach_eni(eni.eni_id, b["instance_id"])
    testing.wait_for(lambda: p.describe_enis([eni.eni_id])[0].status == "Available", 10,
                     "ENI detached", 0.05)
    assert not os.path.exists(f"/run/netns/{pod_b}")
