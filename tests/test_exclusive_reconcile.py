"""Exclusive-ENI rounds in-process against the real apiserver and eniway-cloudsim: a pod's
own ENI with its policy's security groups, a fixed IP moving with its pod to another node,
releaseAfter, slots as an extended resource, no slot on a no-hot-plug type."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator.exclusive_reconcile import TAG_CLAIM, ExclusiveReconciler, NodeFacts
from eniway_operator.testing import make_node, wait_for

pytestmark = pytest.mark.cluster
ZONE = "cn-hangzhou-i"


class World:
    def __init__(self, cluster: Any, sim: Any) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.api = kube_mod.load_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
        self.sim = sim
        self.cloud = sim.provider()
        self.kube = kube_mod.Kube(self.api, "default")
        self.rec = ExclusiveReconciler(self.kube, self.cloud, f"ex-{self.tag}")
        self.nodes: list[str] = []
        with contextlib.suppress(ApiException):  # 409: an earlier test made it
            self.core.create_namespace({"metadata": {"name": "shop"}})  # type: ignore[arg-type]
        self.web_sg = sim.admin.create_security_group(self.topo.vpc_id)["security_group_id"]
        self.db_sg = sim.admin.create_security_group(self.topo.vpc_id)["security_group_id"]

    def node(self, instance_type: str = "ecs.g6.xlarge", vswitch: str = "",
             zone: str = ZONE) -> str:
        name = f"x{len(self.nodes)}-{self.tag}"
        inst = self.sim.admin.create_instance(
            instance_type, vswitch or self.topo.vswitch_ids(ZONE)[0],
            [self.topo.security_group_id])
        make_node(self.api, name, inst["provider_id"], instance_type, zone)
        self.nodes.append(name)
        return name

    def instance(self, node: str) -> str:
        return str(self.core.read_node(node).spec.provider_id).rsplit(".", 1)[-1]

    def policy(self, **spec: Any) -> dict[str, Any]:
        return {"metadata": {"name": "web"}, "spec": {
            "selector": {"podSelector": {"matchLabels": {"app": "web"}}},
            "securityGroupIDs": [self.web_sg, self.db_sg], **spec}}

    def rounds(self, pods: list[dict[str, Any]], policies: list[dict[str, Any]],
               until: Any, split: int = 2, limit: int = 60) -> None:
        facts = [NodeFacts(n, split) for n in self.nodes]
        for _ in range(limit):
            self.rec.round(pods, {}, policies, facts)
            if until():
                return
            time.sleep(0.2)
        raise AssertionError(f"not converged after {limit} rounds")

    def mine(self) -> list[Any]:
        return [e for e in self.cloud.describe_enis(tags=self.rec.tags())]

    def close(self) -> None:
        for e in self.mine():
            with contextlib.suppress(Exception):
                if e.instance_id:
                    self.cloud.detach_eni(e.eni_id, e.instance_id)
        for n in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(n)
        for r in self.kube.list_enis():
            if (r.get("spec") or {}).get("claim") is not None:
                with contextlib.suppress(Exception):
                    self.kube.release_eni(r["metadata"]["name"])
        self.api.close()


@pytest.fixture
def world(cluster: Any, cloudsim: Any) -> Iterator[World]:
    w = World(cluster, cloudsim)
    try:
        yield w
    finally:
        w.close()


def pod(name: str, node: str, uid: str = "", stateful: bool = False) -> dict[str, Any]:
    owners = [{"kind": "StatefulSet", "name": "web", "controller": True}] if stateful else []
    return {"metadata": {"name": name, "namespace": "shop", "uid": uid or f"uid-{name}",
                         "labels": {"app": "web"}, "ownerReferences": owners},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {
                "limits": {contract.RESOURCE_EXCLUSIVE_ENI: "1"}}}]},
            "status": {"phase": "Pending"}}


def test_pod_gets_its_own_eni_with_the_policys_groups(world: World) -> None:
    a = world.node()
    policies = [world.policy()]
    pods = [pod("web-x", a)]
    inst = world.instance(a)

    def attached() -> bool:
        return any(e.instance_id == inst and e.status == "InUse" for e in world.mine())

    world.rounds(pods, policies, attached)
    (eni,) = world.mine()
    assert sorted(eni.security_group_ids) == sorted([world.web_sg, world.db_sg])
    assert eni.tags[TAG_CLAIM] == "uid-web-x" and not eni.private_ips
    r = world.kube.get_eni(eni.eni_id)
    assert r is not None
    assert (r["spec"]["mode"], r["spec"]["podNamespace"], r["spec"]["podName"]) == (
        contract.MODE_EXCLUSIVE, "shop", "web-x")
    assert r["spec"]["macAddress"] == eni.mac and r["spec"]["primaryIP"] == eni.primary_ip
    assert r["metadata"]["labels"][contract.LABEL_NODE] == a
    world.rounds(pods, policies, lambda: (world.kube.get_eni(eni.eni_id) or {}).get(
        "status", {}).get("phase") == contract.PHASE_INUSE)
    # the slots: ecs.g6.xlarge has 2 secondary ENI slots, the split gives both
    cap = world.core.read_node(a).status.capacity or {}
    assert cap.get(contract.RESOURCE_EXCLUSIVE_ENI) == "2"
    # an Elastic pod gone: its ENI is detached, then deleted, its record too
    world.rounds([], policies, lambda: not world.mine())
    wait_for(lambda: world.kube.get_eni(eni.eni_id) is None, 10, "record dropped")


def test_policy_naming_an_unknown_vswitch_is_its_own_problem(world: World) -> None:
    """A policy naming a vSwitch the cloud does not have gets a PolicyInvalid Event; the
    round goes on, and the pods of the other policies get their ENIs."""
    a = world.node()
    bad = {"metadata": {"name": f"gone-{world.tag}"}, "spec": {
        "selector": {"podSelector": {"matchLabels": {"app": f"none-{world.tag}"}}},
        "securityGroupIDs": [world.db_sg], "vSwitchIDs": ["vsw-gone000000000"]}}
    inst = world.instance(a)
    world.rounds([pod("web-y", a)], [bad, world.policy()], lambda: any(
        e.instance_id == inst and e.status == "InUse" for e in world.mine()))

    def event() -> list[Any]:
        return [e for e in world.core.list_namespaced_event("default").items
                if e.involved_object.kind == "ExclusiveENIPolicy"
                and e.involved_object.name == bad["metadata"]["name"]]
    (ev,) = wait_for(event, 10, "the policy's Event")
    assert ev.reason == "PolicyInvalid" and "vsw-gone000000000" in ev.message
    world.rounds([], [bad, world.policy()], lambda: not world.mine())


def test_fixed_ip_moves_with_its_pod_then_is_released(world: World) -> None:
    a, b = world.node(), world.node()
    policies = [world.policy(ipType="Fixed", releaseAfter="2s")]
    ia, ib = world.instance(a), world.instance(b)
    first = [pod("db-0", a, "uid-1", stateful=True)]
    world.rounds(first, policies, lambda: any(
        e.instance_id == ia and e.status == "InUse" for e in world.mine()))
    (before,) = world.mine()
    # the pod is re-created on node b: the same ENI (IP and MAC) is moved there
    t0 = time.monotonic()
    moved = [pod("db-0", b, "uid-2", stateful=True)]
    world.rounds(moved, policies, lambda: any(
        e.instance_id == ib and e.status == "InUse" for e in world.mine()))
    print(f"\nfixed-IP ENI moved between nodes in {time.monotonic() - t0:.2f} s "
          "(emulator attach/detach delays 0.05 s)")
    (after,) = world.mine()
    assert (after.eni_id, after.mac, after.primary_ip) == (
        before.eni_id, before.mac, before.primary_ip)
    r = world.kube.get_eni(after.eni_id)
    assert r is not None and r["spec"]["nodeName"] == b and r["spec"]["instanceId"] == ib
    assert r["metadata"]["labels"][contract.LABEL_NODE] == b
    # nobody claims it: detached, kept Available for releaseAfter (2 s), then deleted
    world.rounds([], policies, lambda: world.mine()[0].status == "Available")
    world.rounds([], policies, lambda: (world.kube.get_eni(after.eni_id) or {}).get(
        "status", {}).get("unclaimedSince") is not None)
    assert world.mine(), "kept while releaseAfter runs"
    world.rounds([], policies, lambda: not world.mine(), limit=100)


def test_no_hot_plug_type_offers_no_slot_and_says_why(world: World) -> None:
    t6 = world.node("ecs.t6-c1m1.large")
    world.rounds([pod("web-y", t6)], [world.policy()], lambda: True, split=1)
    cap = world.core.read_node(t6).status.capacity or {}
    assert cap.get(contract.RESOURCE_EXCLUSIVE_ENI) == "0"
    assert not world.mine(), "no ENI is created for a node that cannot attach it"
    events = world.core.list_namespaced_event("default").items
    assert any(e.involved_object.name == t6 and e.reason == "HotSwapUnsupported"
               for e in events)
    shop = world.core.list_namespaced_event("shop").items
    assert any(e.involved_object.name == "web-y" and "NoExclusiveSlot" in e.message
               for e in shop)



def test_fixed_ip_pod_in_another_zone_gets_an_event_and_a_condition(world: World) -> None:
    """Never a different IP in silence: the pod waits, told why on the pod itself."""
    other = "cn-hangzhou-j"
    vsw_j = world.sim.admin.create_vswitch(world.topo.vpc_id, other, "10.0.9.0/24")[
        "vswitch_id"]
    a, j = world.node(), world.node(vswitch=vsw_j, zone=other)
    policies = [world.policy(ipType="Fixed", releaseAfter="1h")]
    ia = world.instance(a)
    body = pod("db-z", a)
    created = world.core.create_namespaced_pod("shop", {  # type: ignore[arg-type]
        "metadata": {k: v for k, v in body["metadata"].items() if k != "uid"},
        "spec": {**body["spec"], "containers": [{**body["spec"]["containers"][0],
                                                 "image": "busybox"}]}})
    live = dict(body, metadata={**body["metadata"], "uid": created.metadata.uid})

    def condition() -> tuple[str, str, str]:
        for c in world.core.read_namespaced_pod("db-z", "shop").status.conditions or []:
            if c.type == contract.CONDITION_EXCLUSIVE_ENI:
                return str(c.status), str(c.reason), str(c.message)
        return "", "", ""

    try:
        world.rounds([live], policies, lambda: any(
            e.instance_id == ia and e.status == "InUse" for e in world.mine()))
        world.rounds([live], policies, lambda: condition()[0] == "True")
        (eni,) = world.mine()
        assert condition()[1] == "Attached" and eni.eni_id in condition()[2]
        # the same pod (its name: a fixed IP) comes back on a node of zone j
        moved = dict(live, spec={**live["spec"], "nodeName": j})
        world.rounds([moved], policies, lambda: condition()[1] == "ZoneMismatch")
        status, _, message = condition()
        assert status == "False" and eni.eni_id in message and ZONE in message
        (still,) = world.mine()
        assert (still.eni_id, still.primary_ip, still.zone_id) == (
            eni.eni_id, eni.primary_ip, ZONE), "no new ENI, no other IP"
        events = world.core.list_namespaced_event("shop").items
        assert any(e.involved_object.name == "db-z" and e.reason == "ZoneMismatch"
                   for e in events)
    finally:
        with contextlib.suppress(ApiException):
            world.core.delete_namespaced_pod("db-z", "shop", grace_period_seconds=0)


def test_a_deposed_leaders_round_stops_before_any_cloud_call_or_write(world: World) -> None:
    """The exclusive rounds share the shared rounds' fence: the Kube client's and the
    provider's, asked before every write and every cloud attempt."""
    from eniway_operator.leader import NotLeader

    a = world.node()
    leading = {"yes": True}

    def fence(what: str = "") -> None:
        if not leading["yes"]:
            raise NotLeader(f"not the leader any more; refusing {what}")

    world.rec.cloud = world.sim.provider(fence=fence)
    world.kube.fence = fence
    world.rounds([pod("web-f", a)], [world.policy()], lambda: True)  # leading: slots published
    assert (world.core.read_node(a).status.capacity or {}).get(
        contract.RESOURCE_EXCLUSIVE_ENI) == "2"
    leading["yes"] = False
    with pytest.raises(NotLeader):
        world.rec.round([pod("web-g", a)], {}, [world.policy()], [NodeFacts(a, 1)])
    world.kube.fence = None
    assert not [e for e in world.mine() if e.tags.get(TAG_CLAIM) == "uid-web-g"], \
        "no ENI created by a deposed leader"
    assert (world.core.read_node(a).status.capacity or {}).get(
        contract.RESOURCE_EXCLUSIVE_ENI) == "2", "nor its slots rewritten"
