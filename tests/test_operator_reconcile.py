"""The reconciler in-process (no kopf), against the real apiserver and eniway-cloudsim:
rounds are driven by the test, so the moments between planning and acting can be reached."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator import main as operator_main
from eniway_operator.cloud.aliyun import AliyunProvider
from eniway_operator.cloud.base import InstanceLimits
from eniway_operator.cloud.credentials import StaticCredentials
from eniway_operator.metrics import MeteredProvider
from eniway_operator.plan import RELEASE_BATCH_WAIT
from eniway_operator.reconcile import Demand, Reconciler, Settings
from eniway_operator.skew import skew_problem
from eniway_operator.testing import make_node, wait_for

pytestmark = pytest.mark.cluster
ZONE = "cn-hangzhou-i"
UNASSIGN = "UnassignPrivateIpAddresses"


class World:
    def __init__(self, cluster: Any, sim: Any) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.api = kube_mod.load_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ns = f"rec-{self.tag}"
        self.core.create_namespace({"metadata": {"name": self.ns}})  # type: ignore[arg-type]
        self.topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
        self.sim = sim
        self.cloud = MeteredProvider(sim.provider())
        self.kube = kube_mod.Kube(self.api, self.ns)
        self.rec = Reconciler(self.kube, self.cloud, Settings(
            cluster_id=f"rec-{self.tag}", config_namespace=self.ns, config_ttl=0))
        self.nodes: list[str] = []
        self.config({})

    def config(self, extra: dict[str, Any]) -> None:
        cfg = {"security_group_ids": [self.topo.security_group_id], "ip_cooldown": 0,
               **extra}
        body = {"metadata": {"name": "eniway-config"}, "data": {"config.json": json.dumps(cfg)}}
        try:
            self.core.create_namespaced_config_map(self.ns, body)  # type: ignore[arg-type]
        except ApiException:
            self.core.replace_namespaced_config_map("eniway-config", self.ns,
                                                    body)  # type: ignore[arg-type]

    def node(self, instance_type: str = "ecs.g6.xlarge", provider_id: str | None = None,
             annotations: dict[str, str] | None = None) -> str:
        name = f"r{len(self.nodes)}-{self.tag}"
        if provider_id is None:
            inst = self.sim.admin.create_instance(
                instance_type, self.topo.vswitch_ids(ZONE)[0], [self.topo.security_group_id])
            provider_id = inst["provider_id"]
        make_node(self.api, name, provider_id, instance_type, ZONE, annotations)
        self.nodes.append(name)
        return name

    def rounds(self, node: str, demand: Demand, until: Any, limit: int = 40) -> None:
        for _ in range(limit):
            delay = self.rec.reconcile(node, demand)
            if until():
                return
            time.sleep(min(delay or 0.1, 0.3))
        raise AssertionError(f"not converged after {limit} rounds")

    def pool(self, node: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.custom.get_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node))

    def release(self, node: str) -> list[str]:
        return list(((self.pool(node).get("spec") or {}).get("release") or {}).get("ips") or [])

    def ack(self, node: str, ips: list[str]) -> None:
        """As the agent does: for the current release request, with a heartbeat."""
        token = ((self.pool(node).get("spec") or {}).get("release") or {}).get(
            contract.RELEASE_TOKEN)
        self.custom.patch_cluster_custom_object_status(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
            {"status": {"agent": {"acknowledged": ips, "allocated": [],
                                  contract.AGENT_RELEASE_TOKEN: token,
                                  "heartbeat": kube_mod.now_iso()}}})

    def cloud_ips(self, node: str) -> set[str]:
        inst = self.pool(node)["spec"]["instanceId"]
        return {ip for e in self.cloud.inner.describe_enis(instance_id=inst)
                for ip in e.private_ips}

    def close(self) -> None:
        for n in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(n)
            with contextlib.suppress(Exception):
                for _ in range(30):
                    if self.rec.reconcile(n, Demand()) is None:
                        break
                    time.sleep(0.3)
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(self.ns)
        self.api.close()


@pytest.fixture
def world(cluster: Any, cloudsim: Any) -> Iterator[World]:
    w = World(cluster, cloudsim)
    try:
        yield w
    finally:
        w.close()


def _free_ips(w: World, node: str) -> set[str]:
    """The node's free IPs as its ENI records show them."""
    got = w.custom.list_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.PLURAL_ENI,
        label_selector=f"{contract.LABEL_NODE}={node}")["items"]
    return {i["ip"] for e in got for i in (e.get("status") or {}).get("ips") or []
            if i.get("state") == contract.IP_FREE}


def _counts(w: World, node: str) -> dict[str, int]:
    return cast(dict[str, int], (w.pool(node).get("status") or {}).get("counts") or {})


def test_attaching_enis_of_many_nodes_are_polled_in_one_call(world: World) -> None:
    """Rounds that created and attached an ENI do not poll their node: one shared describe
    covers every node's moving ENIs and names the nodes whose ENIs settled; their next
    round records the ENI InUse with its IPs, one status write for the new ENI's record."""
    world.sim.admin.set_settings(attach_delay=2.0)
    world.config({"min_pool_size": 3})
    nodes = [world.node() for _ in range(3)]
    for n in nodes:
        for _ in range(5):
            delay = world.rec.reconcile(n, Demand())
            if world.rec.memory[n].polling:
                break
        assert world.rec.memory[n].polling, n
        assert delay == world.rec.settings.poll_fallback  # not a poll of its own
    polls = {"n": 0}

    def poll() -> set[str]:
        polls["n"] += 1
        return world.rec.poll_moving()

    world.sim.admin.reset_call_counts()
    wait_for(lambda: poll() == set(nodes), 60, "every node's ENI InUse", interval=0.3)
    # one describe per poll for the three nodes together
    assert world.sim.admin.call_counts()["calls"]["DescribeNetworkInterfaces"] == polls["n"]
    for n in nodes:
        world.rec.reconcile(n, Demand())
        counts = world.pool(n)["status"]["counts"]
        assert counts["free"] >= 3 and counts["enis"] == 1, counts
    assert world.rec.poll_moving() == set()
    secondary = [e for e in world.custom.list_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.PLURAL_ENI)["items"]
        if e["spec"]["nodeName"] in nodes and not e["spec"]["primary"]]
    assert len(secondary) == 3
    assert all(e["status"]["phase"] == contract.PHASE_INUSE and e["status"]["freeCount"] >= 3
               for e in secondary)


def test_withdrawn_ack_between_plan_and_act_stops_the_unassign(world: World) -> None:
    node = world.node()
    world.rounds(node, Demand(pending=8), lambda: _counts(world, node).get("free", 0) >= 8)
    # Demand gone: 3 above max_pool_size (5) are marked, nothing unassigned yet.
    world.rec.reconcile(node, Demand())
    marked = world.release(node)
    assert len(marked) == _counts(world, node)["total"] - 5  # above max_pool_size
    assert len(marked) >= 3
    assert world.cloud.calls[UNASSIGN] == 0
    world.ack(node, marked)
    time.sleep(RELEASE_BATCH_WAIT + 0.2)  # fewer than a batch: they wait that long

    # The agent withdraws one acknowledgement after the round planned the unassign,
    # just before it acts: that IP must stay.
    original = world.rec._unassign
    withdrawn = marked[0]

    def late_withdraw(*args: Any, **kw: Any) -> None:
        world.ack(node, marked[1:])
        original(*args, **kw)

    world.rec._unassign = late_withdraw  # type: ignore[method-assign]
    world.rec.reconcile(node, Demand())
    world.rec._unassign = original  # type: ignore[method-assign]
    assert world.cloud.calls[UNASSIGN] == 1
    on_cloud = world.cloud_ips(node)
    assert withdrawn in on_cloud
    assert not set(marked[1:]) & on_cloud
    assert world.release(node) == [withdrawn]

    # Withdrawn for good: further rounds leave it alone.
    world.ack(node, [])
    for _ in range(3):
        world.rec.reconcile(node, Demand())
    assert withdrawn in world.cloud_ips(node)
    assert world.cloud.calls[UNASSIGN] == 1
    # Demand comes back: the mark is taken back rather than new IPs assigned.
    assigns = world.cloud.calls["AssignPrivateIpAddresses"]
    world.rec.reconcile(node, Demand(pending=6))
    assert world.release(node) == []
    assert world.cloud.calls["AssignPrivateIpAddresses"] == assigns


def test_ip_held_by_a_pod_is_never_unassigned_even_if_acked(world: World) -> None:
    node = world.node()
    world.rounds(node, Demand(pending=8), lambda: _counts(world, node).get("free", 0) >= 8)
    world.rec.reconcile(node, Demand())
    marked = world.release(node)
    # A buggy agent acknowledges an IP a PodIP holds: the operator still keeps it.
    held = marked[0]
    world.ack(node, marked)
    pods = {held: ("default", "p0", "uid-0")}
    time.sleep(RELEASE_BATCH_WAIT + 0.2)
    world.rec.reconcile(node, Demand(pods=pods))
    on_cloud = world.cloud_ips(node)
    assert held in on_cloud
    assert held not in world.release(node)


def test_invalid_config_is_a_condition_and_an_event(world: World) -> None:
    node = world.node(annotations={contract.ANNOTATION_POOL_OVERRIDE: '{"max_pool_size": -1}'})
    world.rec.reconcile(node, Demand())
    conds = {c["type"]: c for c in world.pool(node)["status"]["conditions"]}
    assert conds["ConfigInvalid"]["status"] == "True"
    assert "max_pool_size" in conds["ConfigInvalid"]["message"]
    assert conds["Ready"]["status"] == "False"
    evs = world.core.list_namespaced_event("default",
                                           field_selector=f"involvedObject.name={node}")
    assert any(e.reason == "ConfigInvalid" for e in evs.items)
    # Fixed on the ENIPool (highest precedence): back to Ready.
    world.custom.patch_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
        {"spec": {"config": {"max_pool_size": 7}}})
    world.core.patch_node(node, {"metadata": {"annotations": {
        contract.ANNOTATION_POOL_OVERRIDE: None}}})
    world.rec.reconcile(node, Demand())
    status = world.pool(node)["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["ConfigInvalid"]["status"] == "False"
    assert status["config"]["max_pool_size"] == 7


def test_node_without_instance_id_is_left_alone(world: World) -> None:
    node = world.node(provider_id="kind://docker/kind/node")
    assert world.rec.reconcile(node, Demand(pending=3)) == 60.0
    with pytest.raises(ApiException):
        world.pool(node)
    assert world.cloud.calls["CreateNetworkInterface"] == 0


def test_quota_exceeded_private_ip_address_block_lists_the_vswitch(world: World) -> None:
    """ECS documents QuotaExceeded.PrivateIpAddress as "Don't have enough private IPs in
    this switch" (AlibabaCloudDocs/ecs, RunInstances.md error table) and Terway
    block-lists the vSwitch on it (terway pkg/controller/multi-ip/node/pool.go): so does
    the operator, and it carries on with the next vSwitch of the zone."""
    first = world.topo.vswitch_ids(ZONE)[0]
    second = world.sim.admin.create_vswitch(world.topo.vpc_id, ZONE, "10.0.1.0/24")["vswitch_id"]
    world.config({"vswitches": {ZONE: [first, second]}, "vswitch_selection_policy": "ordered"})
    node = world.node()
    for api in ("CreateNetworkInterface", "AssignPrivateIpAddresses"):
        world.sim.admin.add_fault(api, count=1, status=400, code="QuotaExceeded.PrivateIpAddress",
                                  message="Don't have enough private IPs in this switch")
    world.rounds(node, Demand(pending=4), lambda: _counts(world, node).get("free", 0) >= 4)
    inst = world.pool(node)["spec"]["instanceId"]
    secondary = [e for e in world.cloud.inner.describe_enis(instance_id=inst)
                 if e.type == "Secondary"]
    assert secondary and {e.vswitch_id for e in secondary} == {second}
    conds = {c["type"]: c for c in world.pool(node)["status"]["conditions"]}
    assert conds["VSwitchExhausted"]["status"] == "True"
    assert first in conds["VSwitchExhausted"]["message"]
    assert conds.get("QuotaExceeded", {}).get("status") != "True"


def test_acknowledgement_expires_when_the_heartbeat_stops(world: World) -> None:
    """``--agent-timeout`` (short here): an acknowledgement whose heartbeat stopped moving
    for longer than the window unassigns nothing; a fresh heartbeat does."""
    args = operator_main.parse_args(["--cluster-id", world.rec.settings.cluster_id,
                                     "--namespace", world.ns, "--agent-timeout", "2"])
    settings = dataclasses.replace(operator_main.settings_from(args), config_ttl=0)
    assert settings.agent_timeout == 2.0
    world.rec = Reconciler(world.kube, world.cloud, settings)
    node = world.node()
    world.rounds(node, Demand(pending=8), lambda: _counts(world, node).get("free", 0) >= 8)
    world.rec.reconcile(node, Demand())
    marked = world.release(node)
    assert len(marked) >= 3
    world.ack(node, marked)  # one heartbeat, then the agent falls silent
    world.rec.reconcile(node, Demand())  # seen now; the batch wait is not over yet
    assert world.cloud.calls[UNASSIGN] == 0
    # Past the batch wait and the window: rounds keep finding the ack too old.
    deadline = time.monotonic() + RELEASE_BATCH_WAIT + settings.agent_timeout + 1
    while time.monotonic() < deadline:
        world.rec.reconcile(node, Demand())
        assert world.cloud.calls[UNASSIGN] == 0, "acted on an expired acknowledgement"
        assert set(marked) <= world.cloud_ips(node)
    # The pool says so: not Ready, AgentUnresponsive with the reason, and an Event.
    conds = {c["type"]: c for c in world.pool(node)["status"]["conditions"]}
    assert conds["AgentUnresponsive"]["status"] == "True", conds
    assert "heartbeat" in conds["AgentUnresponsive"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert "AgentUnresponsive" in conds["Ready"]["message"]
    reasons = {e.reason for e in world.core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={node}").items}
    assert "AgentUnresponsive" in reasons, reasons
    # The agent beats again (a new heartbeat value): the same acknowledgement counts.
    world.ack(node, marked)
    world.rec.reconcile(node, Demand())
    assert world.cloud.calls[UNASSIGN] >= 1
    assert not set(marked) & world.cloud_ips(node)
    conds = {c["type"]: c for c in world.pool(node)["status"]["conditions"]}
    assert conds["AgentUnresponsive"]["status"] == "False"
    assert conds["Ready"]["status"] == "True", conds


def test_exclusive_eni_on_the_node_is_left_alone_and_keeps_its_slot(world: World) -> None:
    """An ENI a pod owns whole (tagged exclusive, its resource says so) is neither used,
    detached, recorded nor dropped by the shared pool, which plans around its slot."""
    node = world.node()  # ecs.g6.xlarge: 3 ENIs, the primary and 2 secondary
    inst_id = str(world.core.read_node(node).spec.provider_id).split(".")[-1]
    vsw = world.topo.vswitch_ids(ZONE)[0]
    tags = {**world.rec.tags_for(node, inst_id, {}),
            contract.TAG_MODE: contract.TAG_MODE_EXCLUSIVE}
    own = world.cloud.inner.create_eni(vsw, [world.topo.security_group_id], tags)
    world.cloud.inner.attach_eni(own.eni_id, inst_id)
    world.kube.create_eni(own.eni_id, node, {
        "nodeName": node, "instanceId": inst_id, "vSwitchId": vsw,
        "managed": True, "mode": contract.MODE_EXCLUSIVE, "macAddress": own.mac,
        "primaryIP": own.primary_ip}, {"phase": contract.PHASE_ATTACHING})
    world.config({"min_pool_size": 12, "max_pool_size": 20})  # more than one ENI holds

    def settled() -> bool:
        conds = {c["type"]: c for c in (world.pool(node).get("status") or {}).get(
            "conditions") or []}
        return (_counts(world, node).get("enis") == 1
                and conds.get("LimitReached", {}).get("status") == "True")

    world.rounds(node, Demand(), settled)
    for _ in range(3):  # and stays so
        world.rec.reconcile(node, Demand())
    enis = world.cloud.inner.describe_enis(instance_id=inst_id)
    mine = [e for e in enis if e.eni_id == own.eni_id]
    assert mine and mine[0].status == "InUse" and not mine[0].private_ips
    assert len([e for e in enis if e.type == "Secondary"]) == 2  # the instance's limit
    assert _counts(world, node).get("total") == 9
    kept = world.kube.get_eni(own.eni_id)
    assert kept is not None and kept["spec"]["mode"] == contract.MODE_EXCLUSIVE
    assert own.eni_id not in world.rec._shared_resources(node)

@pytest.mark.parametrize(("agent", "ok"), [
    ("", True), ("0.1.0", True), ("0.1.7", True), ("0.0.9", True), ("v0.1", True),
    ("0.2.0", False), ("1.1.0", False), ("nightly", False)])
def test_skew_policy(agent: str, ok: bool) -> None:
    problem = skew_problem("0.1.0", agent)
    assert (problem == "") == ok, problem
    assert skew_problem("1.5.0", "1.3.2").startswith("agent 1.3.2 is 2 minor versions behind")
    assert skew_problem("unknown", "9.9.9") == ""  # a source checkout: no policy to apply


def _condition(pool: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (pool.get("status") or {}).get("conditions") or []
                 if c["type"] == ctype), {})


def test_agent_version_beyond_the_skew_policy_is_a_condition_and_an_event(
        world: World) -> None:
    node = world.node()
    world.rounds(node, Demand(pending=2), lambda: _counts(world, node).get("free", 0) >= 2)
    world.rec.version = "0.4.2"  # the operator this test plays

    def agent_reports(version: str) -> None:
        world.custom.patch_cluster_custom_object_status(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
            {"status": {"agent": {"version": version, "heartbeat": kube_mod.now_iso()}}})
        world.rec.reconcile(node, Demand())

    agent_reports("0.3.9")  # one minor behind: within policy
    cond = _condition(world.pool(node), "VersionSkew")
    assert cond["status"] == "False" and cond["reason"] == "Supported", cond
    assert _condition(world.pool(node), "Ready")["status"] == "True"

    agent_reports("0.5.0")  # newer than the operator: beyond
    pool = world.pool(node)
    cond = _condition(pool, "VersionSkew")
    assert cond["status"] == "True" and "upgrade the operator first" in cond["message"], cond
    assert _condition(pool, "Ready")["status"] == "False"
    uid = pool["metadata"]["uid"]
    events = world.core.list_namespaced_event(
        "default", field_selector=f"involvedObject.uid={uid},reason=VersionSkew").items
    assert events and "agent 0.5.0 is newer than operator 0.4.2" in events[0].message

    agent_reports("0.4.0")  # the agent upgraded too
    assert _condition(world.pool(node), "VersionSkew")["status"] == "False"
    assert _condition(world.pool(node), "Ready")["status"] == "True"


class PodsOnPrimary(AliyunProvider):
    """The real provider with one cloud rule switched to EC2's: the primary ENI's
    secondary IPs serve pods (the ECS emulator, like ECS, lets the primary ENI hold them)."""

    def instance_limits(self, instance_type: str) -> InstanceLimits:
        return dataclasses.replace(super().instance_limits(instance_type),
                                   pods_on_primary_eni=True, max_pods_extra=2)


def test_pods_on_the_primary_eni_filled_first_kept_attached_released_by_handshake(
        world: World) -> None:
    sim = world.sim
    world.cloud = MeteredProvider(PodsOnPrimary(
        region_id=sim.region, endpoint=sim.endpoint, protocol="http",
        credentials=StaticCredentials(sim.access_key_id, sim.access_key_secret)))
    world.rec = Reconciler(world.kube, world.cloud, world.rec.settings)
    node = world.node()  # ecs.g6.xlarge: 3 ENIs x 10 IPs, so 3 x 9 pod IPs
    world.rounds(node, Demand(pending=4), lambda: _counts(world, node).get("free", 0) >= 4)
    inst = world.pool(node)["spec"]["instanceId"]

    def enis() -> dict[str, Any]:
        return {e.type: e for e in world.cloud.inner.describe_enis(instance_id=inst)}

    primary = enis()["Primary"]
    # the primary ENI's room first (the 4 IPs the pods need): no ENI created, its IPs
    # listed on its resource
    assert world.cloud.calls["CreateNetworkInterface"] == 0
    assert len(primary.private_ips) == 4 and set(enis()) == {"Primary"}
    record = world.kube.get_eni(primary.eni_id)
    assert record is not None and record["spec"]["primary"] is True
    assert record["spec"]["gatewayIP"] == "10.0.0.253"
    assert {i["ip"] for i in record["status"]["ips"]} == set(primary.private_ips)
    assert {i["state"] for i in record["status"]["ips"]} == {contract.IP_FREE}
    counts = _counts(world, node)
    assert (counts["enis"], counts["total"]) == (0, 4)
    pool = world.pool(node)
    assert pool["status"]["limits"]["maxPods"] == 3 * 9 + 2
    assert world.core.read_node(node).metadata.annotations[
        contract.ANNOTATION_MAX_PODS] == "29"

    # more than it holds: a secondary ENI, the primary full
    world.rounds(node, Demand(pending=12), lambda: _counts(world, node).get("free", 0) >= 12)
    assert world.cloud.calls["CreateNetworkInterface"] == 1
    primary = enis()["Primary"]
    assert len(primary.private_ips) == 9

    # scale down to nothing: every free IP is marked, none goes before the agent acks
    world.config({"max_pool_size": 0, "empty_eni_reclaim_after": 0})
    held = primary.private_ips[0]  # a pod keeps one IP of the primary ENI
    pods = {held: ("default", "p0", "uid-0")}
    world.rec.reconcile(node, Demand(pods=pods))
    marked = world.release(node)
    assert set(primary.private_ips) - {held} <= set(marked) and held not in marked
    time.sleep(RELEASE_BATCH_WAIT + 0.2)
    world.rec.reconcile(node, Demand(pods=pods))
    assert world.cloud.calls[UNASSIGN] == 0
    assert set(enis()["Primary"].private_ips) == set(primary.private_ips)
    world.ack(node, marked)
    world.rounds(node, Demand(pods=pods), lambda: set(enis()) == {"Primary"}
                 and enis()["Primary"].private_ips == (held,))
    # the secondary ENI went whole (detach, delete), the primary's IPs one call at a time,
    # and the primary ENI stays attached, its record too
    assert world.cloud.calls["DetachNetworkInterface"] == 1
    assert world.cloud.calls[UNASSIGN] >= 1
    assert enis()["Primary"].status == "InUse"
    world.rec.reconcile(node, Demand(pods=pods))  # what is gone from the cloud is unlisted
    assert world.release(node) == []
    record = world.kube.get_eni(primary.eni_id)
    assert record is not None and [i["ip"] for i in record["status"]["ips"]] == [held]
    assert record["status"]["ips"][0]["state"] == contract.IP_ALLOCATED


def test_a_pod_served_before_its_podip_is_seen_is_not_asked_for_twice(world: World) -> None:
    world.config({"min_pool_size": 0, "max_pool_size": 5})
    node = world.node("ecs.g6.4xlarge")
    world.rounds(node, Demand(pending=4), lambda: _counts(world, node).get("free", 0) >= 4)
    ips = sorted(world.cloud_ips(node) - {world.pool(node)["spec"].get("primaryIP", "")})
    total = _counts(world, node)["total"]
    assigns = world.cloud.calls["AssignPrivateIpAddresses"]
    creates = world.cloud.calls["CreateNetworkInterface"]
    # The agent handed the four pods their IPs; their PodIPs have not reached the index,
    # so the pods still count as waiting. Their IPs are not asked for a second time.
    served = [ip for ip in ips if ip in _free_ips(world, node)][:4]
    world.custom.patch_cluster_custom_object_status(
        contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
        {"status": {"agent": {"acknowledged": [], "allocated": served,
                              "heartbeat": kube_mod.now_iso()}}})
    for _ in range(3):
        world.rec.reconcile(node, Demand(pending=4))
    assert world.cloud.calls["AssignPrivateIpAddresses"] == assigns
    assert world.cloud.calls["CreateNetworkInterface"] == creates
    assert _counts(world, node)["total"] == total
    assert _counts(world, node)["pending"] == 0
    # a fifth pod is another matter: its IP is asked for
    world.rec.reconcile(node, Demand(pending=5))
    assert _counts(world, node)["total"] == total + 1


def test_a_burst_gets_its_ips_pods_that_keep_arriving_whole_batches(world: World) -> None:
    node = world.node("ecs.g6.4xlarge")  # 19 IPs an ENI
    # a burst (none waited at the last round): the new ENI gets the 2 pods' IPs, no more
    world.rounds(node, Demand(pending=2), lambda: _counts(world, node).get("free", 0) >= 2)
    assert _counts(world, node)["total"] == 2
    before = world.cloud_ips(node)
    assigns = world.cloud.calls["AssignPrivateIpAddresses"]
    # 2 waited at that round and 3 more came: the call carries a whole batch of 10
    world.rec.reconcile(node, Demand(pending=5))
    assert world.cloud.calls["AssignPrivateIpAddresses"] == assigns + 1
    assert len(world.cloud_ips(node) - before) == 10
