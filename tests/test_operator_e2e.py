"""The operator against the real apiserver (``cluster``) and eniway-cloudsim through the
official SDK (``cloudsim``), with the agent double answering for the nodes.

Every test runs the operator as a child process (so it can be SIGKILLed), on its own
cluster id, namespace and nodes, and removes them at the end.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator.testing import (
    AgentDouble,
    OperatorProcess,
    delete_pods,
    make_node,
    make_pods,
    wait_for,
)

pytestmark = pytest.mark.cluster
ZONE = "cn-hangzhou-i"
JSON = dict[str, Any]


class Env:
    """One test's world: the emulator's VPC, a namespace with the ConfigMap, nodes."""

    def __init__(self, cluster: Any, sim: Any, tmp: Path) -> None:
        self.cluster = cluster
        self.sim = sim
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:6]
        self.cluster_id = f"test-{self.tag}"
        self.namespace = f"eniway-{self.tag}"
        self.api = kube_mod.load_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/28"]})
        self.vsw = self.topo.vswitch_ids(ZONE)
        self.provider = sim.provider()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.operators: list[OperatorProcess] = []
        self.agent: AgentDouble | None = None
        self.core.create_namespace({"metadata": {"name": self.namespace}})  # type: ignore[arg-type]
        wait_for(lambda: self._sa_ready(), 30, "default service account")

    def _sa_ready(self) -> bool:
        try:
            self.core.read_namespaced_service_account("default", self.namespace)
            return True
        except ApiException:
            return False

    # -- configuration -------------------------------------------------------------------
    def config(self, **pool: Any) -> None:
        base = {"security_group_ids": [self.topo.security_group_id],
                "vswitches": {ZONE: self.vsw[:2]}, "ip_cooldown": 0,
                "empty_eni_reclaim_after": "2s"}
        base.update(pool)
        body = {"metadata": {"name": "eniway-config"},
                "data": {"config.yaml": yaml.safe_dump(base)}}
        try:
            self.core.create_namespaced_config_map(self.namespace, body)  # type: ignore[arg-type]
        except ApiException:
            self.core.replace_namespaced_config_map("eniway-config", self.namespace,
                                                    body)  # type: ignore[arg-type]

    # -- nodes ---------------------------------------------------------------------------
    def add_node(self, instance_type: str, status: str = "Running",
                 annotations: dict[str, str] | None = None) -> str:
        name = f"n{len(self.nodes)}-{self.tag}"
        inst = self.sim.admin.create_instance(instance_type, self.vsw[0],
                                              [self.topo.security_group_id], name=name,
                                              status=status)
        make_node(self.api, name, inst["provider_id"], instance_type, ZONE, annotations)
        self.nodes[name] = inst
        if self.agent is not None:
            self.agent.nodes.add(name)
        return name

    def instance_id(self, node: str) -> str:
        return str(self.nodes[node]["instance_id"])

    # -- processes -----------------------------------------------------------------------
    def operator(self, *extra: str, start: bool = True,
                 access_key: tuple[str, str] | None = None) -> OperatorProcess:
        """``access_key``: its own AccessKey (registered with the emulator), so the
        emulator's counters tell this replica's calls apart."""
        if access_key is not None:
            self.sim.admin.add_access_key(*access_key)
        op = OperatorProcess(self.cluster.kubeconfig, self.cluster_id, self.sim.endpoint,
                             self.sim.region, self.namespace, "eniway-config",
                             access_key or (self.sim.access_key_id, self.sim.access_key_secret),
                             self.tmp / f"operator-{len(self.operators)}.log",
                             extra=("--gc-interval=2", "--gc-grace=4", "--resync=5",
                                    "--lease-duration=6", *extra))
        self.operators.append(op)
        return op.start() if start else op

    def start_agent(self) -> AgentDouble:
        self.agent = AgentDouble(self.api, self.nodes, interval=0.1).start()
        return self.agent

    # -- reading -------------------------------------------------------------------------
    def pool(self, node: str) -> JSON | None:
        try:
            return cast(JSON, self.custom.get_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def enis(self, node: str) -> list[JSON]:
        got = cast(JSON, self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENI,
            label_selector=f"{contract.LABEL_NODE}={node}"))
        return cast(list[JSON], got["items"])

    def cloud_enis(self, node: str) -> list[Any]:
        return [e for e in self.provider.describe_enis(instance_id=self.instance_id(node))]

    def counts(self, node: str) -> JSON:
        pool = self.pool(node) or {}
        return cast(JSON, (pool.get("status") or {}).get("counts") or {})

    def condition(self, node: str, ctype: str) -> str:
        for c in ((self.pool(node) or {}).get("status") or {}).get("conditions") or []:
            if c["type"] == ctype:
                return str(c["status"])
        return ""

    def events(self, node: str) -> list[JSON]:
        evs = self.core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name={node}")
        return [{"reason": e.reason, "message": e.message} for e in evs.items]

    def check_truth(self, node: str) -> None:
        """ENI resources tell what the cloud has, and limits hold (invariant 4)."""
        limits = self.provider.instance_limits(self.nodes[node]["instance_type"])
        cloud = {e.eni_id: e for e in self.cloud_enis(node)}
        assert len(cloud) <= limits.max_enis
        recorded = {r["metadata"]["name"]: r for r in self.enis(node)
                    if not r["metadata"].get("deletionTimestamp")}
        assert set(recorded) == set(cloud), (set(recorded), set(cloud))
        for eni_id, e in cloud.items():
            assert len(e.private_ips) <= limits.ips_per_eni - 1
            r = recorded[eni_id]
            if e.type == "Primary":
                assert r["spec"]["primary"] is True
                continue
            assert r["spec"]["managed"] is True
            assert r["spec"]["vSwitchId"] == e.vswitch_id
            assert r["spec"]["macAddress"].lower() == e.mac.lower()
            assert r["status"]["phase"] == contract.PHASE_INUSE
            assert sorted(i["ip"] for i in r["status"]["ips"]) == sorted(e.private_ips)

    def converged(self, node: str, free_at_least: int = 0, free_at_most: int = 1 << 30,
                  pending: int = 0) -> bool:
        pool = self.pool(node)
        if not pool:
            return False
        c = (pool.get("status") or {}).get("counts") or {}
        if c.get("pending", -1) != pending:
            return False
        if not (free_at_least <= c.get("free", -1) <= free_at_most):
            return False
        if c.get("releasing"):
            return False
        recorded = sorted(r["metadata"]["name"] for r in self.enis(node))
        cloud = sorted(e.eni_id for e in self.cloud_enis(node))
        if recorded != cloud:
            return False
        return all(r.get("status", {}).get("phase") == contract.PHASE_INUSE
                   for r in self.enis(node))

    def tagged_leftovers(self) -> list[Any]:
        return self.provider.describe_enis(tags={contract.TAG_CLUSTER: self.cluster_id})

    # -- cleanup -------------------------------------------------------------------------
    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        for name in self.nodes:
            with contextlib.suppress(ApiException):
                self.core.delete_node(name)
        alive = [op for op in self.operators if op.alive()]
        if alive:
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: all(self.pool(n) is None for n in self.nodes), 30,
                         "node teardown")
        for op in self.operators:
            op.stop()
        for name in self.nodes:
            for r in self.enis(name):
                with contextlib.suppress(ApiException):
                    self.custom.patch_cluster_custom_object(
                        contract.GROUP, contract.VERSION, contract.PLURAL_ENI,
                        r["metadata"]["name"], {"metadata": {"finalizers": []}})
                    self.custom.delete_cluster_custom_object(
                        contract.GROUP, contract.VERSION, contract.PLURAL_ENI,
                        r["metadata"]["name"])
            with contextlib.suppress(ApiException):
                self.custom.delete_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, name)
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(self.namespace)
        self.api.close()


@pytest.fixture
def env(cluster: Any, cloudsim: Any, tmp_path: Path) -> Iterator[Env]:
    e = Env(cluster, cloudsim, tmp_path)
    try:
        yield e
    finally:
        for i, op in enumerate(e.operators):
            print(f"--- operator {i} log tail ---\n{op.log_tail(40)}")
        e.close()


def _pods_ns(env: Env, node: str, n: int, prefix: str = "p") -> list[str]:
    return make_pods(env.api, node, n, namespace=env.namespace, prefix=prefix)


# --- tests ---------------------------------------------------------------------------------

def test_nodes_of_three_types_converge(env: Env) -> None:
    env.config(min_pool_size=3)
    g6 = env.add_node("ecs.g6.xlarge")
    big = env.add_node("ecs.g6.4xlarge")
    t6 = env.add_node("ecs.t6-c1m1.large")  # no hot swap
    env.start_agent()
    op = env.operator()
    wait_for(lambda: env.converged(g6, 3, 5) and env.converged(big, 3, 5), 60,
             "g6 nodes warm")
    for node in (g6, big):
        env.check_truth(node)
        pool = env.pool(node) or {}
        limits = env.provider.instance_limits(env.nodes[node]["instance_type"])
        assert pool["status"]["limits"]["maxPods"] == limits.max_pods
        assert pool["status"]["config"]["min_pool_size"] == 3
        annotations = (env.core.read_node(node).metadata or client.V1ObjectMeta()).annotations
        assert (annotations or {})[contract.ANNOTATION_MAX_PODS] == str(limits.max_pods)
    # The t6 cannot take an ENI while running: a condition and an Event say so.
    wait_for(lambda: env.condition(t6, "HotSwapUnsupported") == "True", 30, "t6 condition")
    assert any(e["reason"] == "HotSwapUnsupported" for e in env.events(t6))
    assert [e for e in env.cloud_enis(t6) if e.type != "Primary"] == []
    env.sim.admin.stop(env.instance_id(t6))
    wait_for(lambda: len(env.cloud_enis(t6)) == 2, 60, "ENI attached to the stopped t6")
    env.sim.admin.start(env.instance_id(t6))
    # t6-c1m1.large: 2 ENIs x 2 IPs -> max one pod IP: the pool stops there and says why.
    wait_for(lambda: env.converged(t6, 1, 1), 60, "t6 pool")
    wait_for(lambda: env.condition(t6, "HotSwapUnsupported") == "False", 30, "t6 cleared")
    assert env.condition(t6, "LimitReached") == "True"
    env.check_truth(t6)
    out = env.cluster.kubectl("get", "enis,enipools", "-o", "json").stdout
    listed = {i["metadata"]["name"] for i in json.loads(out)["items"]
              if i["kind"] == "ENI" and i["spec"]["nodeName"] in env.nodes}
    cloud = {e.eni_id for n in env.nodes for e in env.cloud_enis(n)}
    assert listed == cloud
    assert env.agent is not None and env.agent.violations == []
    assert op.alive(), op.log_tail()


def _mutating(counts: JSON) -> dict[str, int]:
    calls = counts.get("calls") or {}
    keep = ("CreateNetworkInterface", "AttachNetworkInterface", "AssignPrivateIpAddresses",
            "UnassignPrivateIpAddresses", "DetachNetworkInterface", "DeleteNetworkInterface")
    return {k: int(v) for k, v in calls.items() if k in keep}


def test_churn_batches_and_releases_only_after_ack(env: Env) -> None:
    env.config(min_pool_size=0, max_pool_size=5)
    node = env.add_node("ecs.g6.4xlarge")  # 7 secondary ENIs x 19 IPs
    agent = env.start_agent()
    env.operator()
    wait_for(lambda: env.pool(node) and env.counts(node).get("total") == 0, 60, "empty pool")
    env.sim.admin.reset_call_counts()

    pods = _pods_ns(env, node, 40)
    wait_for(lambda: len(agent.held(node)) == 40, 90, "40 pods with IPs")
    wait_for(lambda: env.converged(node, 0, 5), 60, "pool after scale-up")
    up = _mutating(env.sim.admin.call_counts())
    env.check_truth(node)
    # 40 IPs at 10 per call: 4 batches, plus at most one partial batch per ENI touched.
    enis_used = len([e for e in env.cloud_enis(node) if e.type != "Primary"])
    assigned_calls = up.get("AssignPrivateIpAddresses", 0) + up.get("CreateNetworkInterface", 0)
    print(f"scale-up 40 pods: {up} over {enis_used} ENIs")
    assert enis_used == 3  # ceil(40 / 19)
    assert assigned_calls <= 4 + 2 * enis_used

    # Scale down with the agent refusing to acknowledge: the excess is only marked.
    agent.ack = False
    env.sim.admin.reset_call_counts()
    delete_pods(env.api, pods, env.namespace)
    wait_for(lambda: len(agent.held(node)) == 0, 60, "PodIPs gone")
    marked = wait_for(lambda: ((env.pool(node) or {}).get("spec", {}).get("release") or {})
                      .get("ips"), 60, "release marks")
    time.sleep(3)
    assert _mutating(env.sim.admin.call_counts()).get("UnassignPrivateIpAddresses", 0) == 0
    on_cloud = {ip for e in env.cloud_enis(node) for ip in e.private_ips}
    assert set(marked) <= on_cloud
    # Acknowledge all but three: only the acknowledged ones go back to the cloud.
    keep = set(sorted(marked)[:3])
    agent.refuse = set(keep)
    agent.ack = True
    wait_for(lambda: set((env.pool(node) or {})["spec"]["release"]["ips"]) == keep, 60,
             "acknowledged IPs unassigned")
    on_cloud = {ip for e in env.cloud_enis(node) for ip in e.private_ips}
    assert keep <= on_cloud
    assert not (set(marked) - keep) & on_cloud
    agent.refuse = set()
    wait_for(lambda: env.converged(node, 0, 5), 60, "pool after scale-down")
    down = _mutating(env.sim.admin.call_counts())
    print(f"scale-down 40 pods: {down}")
    assert down.get("UnassignPrivateIpAddresses", 0) <= 2 + 4 + enis_used
    assert agent.violations == []
    env.check_truth(node)


def _no_leaks(env: Env, node: str) -> None:
    """Every ENI tagged with this cluster is attached to the node and recorded."""
    inst = env.instance_id(node)
    left = env.tagged_leftovers()
    assert all(e.instance_id == inst and e.status == "InUse" for e in left), left
    recorded = {r["metadata"]["name"] for r in env.enis(node)}
    assert {e.eni_id for e in left} <= recorded


@pytest.mark.parametrize("api", ["CreateNetworkInterface", "AttachNetworkInterface",
                                 "AssignPrivateIpAddresses"])
def test_sigkill_mid_call_then_restart_converges(env: Env, api: str) -> None:
    env.config(min_pool_size=0, max_pool_size=5)
    node = env.add_node("ecs.g6.4xlarge")
    agent = env.start_agent()
    op = env.operator()
    first = 5 if api == "AssignPrivateIpAddresses" else 0
    if first:  # an ENI with room, so the next demand is an assign on it
        _pods_ns(env, node, first, prefix="a")
        wait_for(lambda: len(agent.held(node)) == first, 60, "first pods")
        wait_for(lambda: env.converged(node, 0, 5), 60, "first pool")
    env.sim.admin.set_faults({api: {"latency_ms": 2500}})
    before = env.sim.admin.call_counts()["calls"].get(api, 0)
    _pods_ns(env, node, 12, prefix="b")
    wait_for(lambda: env.sim.admin.call_counts()["calls"].get(api, 0) > before, 60,
             f"{api} in flight")
    op.kill(signal.SIGKILL)  # the call still completes in the cloud: its answer is lost
    time.sleep(3)
    env.sim.admin.clear_faults()
    env.operator()
    wait_for(lambda: len(agent.held(node)) == first + 12, 90, "every pod served")
    wait_for(lambda: env.converged(node, 0, 5), 90, "pool after restart")
    wait_for(lambda: not [e for e in env.tagged_leftovers() if e.status == "Available"], 60,
             "leaked ENIs adopted or collected")
    _no_leaks(env, node)
    env.check_truth(node)
    enis = [e for e in env.cloud_enis(node) if e.type != "Primary"]
    assert len(enis) == 1, enis  # 17 pods + <= 5 free fit in one ENI: nothing duplicated
    assert agent.violations == []


def test_two_replicas_never_act_at_once(env: Env) -> None:
    env.config(min_pool_size=2)
    node = env.add_node("ecs.g6.xlarge")
    agent = env.start_agent()
    a = env.operator()
    b = env.operator()
    leader = wait_for(lambda: [o for o in (a, b) if o.is_leader()], 60, "a leader")
    assert len(leader) == 1
    standby = b if leader[0] is a else a
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool")
    assert standby.cloud_calls() == 0 and not standby.is_leader()
    leader[0].kill(signal.SIGKILL)
    wait_for(lambda: standby.is_leader(), 60, "standby takes over")
    _pods_ns(env, node, 4)
    wait_for(lambda: len(agent.held(node)) == 4, 60, "pods served by the new leader")
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool under the new leader")
    assert standby.cloud_calls() > 0
    env.check_truth(node)


MUTATING = ("CreateNetworkInterface", "AttachNetworkInterface", "DetachNetworkInterface",
            "DeleteNetworkInterface", "AssignPrivateIpAddresses", "UnassignPrivateIpAddresses",
            "ModifyNetworkInterfaceAttribute")


def test_deposed_leader_sends_nothing_after_resuming(env: Env) -> None:
    """The leader sits in a throttling back-off on CreateNetworkInterface; it is stopped
    (SIGSTOP) past its lease, the standby takes over and warms the node, then the old one
    resumes (SIGCONT). The emulator, counting by AccessKey, sees no mutating call from the
    old leader afterwards, and the node ends with one secondary ENI: none duplicated."""
    env.config(min_pool_size=2)
    node = env.add_node("ecs.g6.xlarge")
    env.start_agent()
    env.sim.admin.add_fault("CreateNetworkInterface", error_rate=1.0, code="Throttling",
                            status=400, message="Request was denied due to request throttling.")
    a = env.operator(access_key=("op-a", "op-a-secret"))
    wait_for(a.is_leader, 60, "the first replica leads")
    b = env.operator(access_key=("op-b", "op-b-secret"))

    def by(key: str) -> dict[str, int]:
        return dict(env.sim.admin.call_counts().get("callers", {}).get(key, {}))

    wait_for(lambda: by("op-a").get("CreateNetworkInterface", 0) >= 1, 60,
             "the leader throttled on CreateNetworkInterface", interval=0.05)
    a.kill(signal.SIGSTOP)  # in its back-off, with retries left
    try:
        wait_for(b.is_leader, 60, "the standby takes over", detail=lambda: b.log_tail())
        before = by("op-a")  # everything the old leader sent before it was stopped
        env.sim.admin.clear_faults()
        wait_for(lambda: env.converged(node, 2, 5), 90, "the new leader warms the node")
    finally:
        a.kill(signal.SIGCONT)
    assert a.proc is not None
    wait_for(lambda: not a.alive(), 90, "the deposed replica exits", detail=a.log_tail)
    assert a.proc.returncode == 1, a.log_tail()  # "leadership lost"
    after = by("op-a")
    sent = {api: after.get(api, 0) - before.get(api, 0) for api in MUTATING
            if after.get(api, 0) != before.get(api, 0)}
    assert sent == {}, f"mutating calls from the deposed leader: {sent}\n{a.log_tail()}"
    ours = [e for e in env.tagged_leftovers() if e.type != "Primary"]
    assert len(ours) == 1 and ours[0].status == "InUse", ours  # no duplicate, none leaked
    assert by("op-b").get("CreateNetworkInterface", 0) >= 1
    env.check_truth(node)


def test_throttling_errors_and_latency_lose_nothing(env: Env) -> None:
    env.config(min_pool_size=0, max_pool_size=5)
    node = env.add_node("ecs.g6.4xlarge")
    agent = env.start_agent()
    env.sim.admin.set_faults({
        "AssignPrivateIpAddresses": {"error_rate": 0.4, "code": "InternalError",
                                     "status": 500, "latency_ms": 100, "phase": "after"},
        "CreateNetworkInterface": {"error_rate": 0.3, "code": "ServiceUnavailable",
                                   "status": 503, "phase": "after"},
        "AttachNetworkInterface": {"error_rate": 0.3, "code": "InternalError", "status": 500},
        "UnassignPrivateIpAddresses": {"error_rate": 0.3, "code": "InternalError",
                                       "status": 500, "phase": "after"},
    }, seed=7)
    env.sim.admin.set_throttle("DescribeNetworkInterfaces", 5, burst=3)
    env.operator()
    pods = _pods_ns(env, node, 30)
    wait_for(lambda: len(agent.held(node)) == 30, 120, "30 pods served despite faults")
    delete_pods(env.api, pods[:20], env.namespace)
    wait_for(lambda: len(agent.held(node)) == 10, 60, "PodIPs released")
    wait_for(lambda: env.converged(node, 0, 5), 120, "pool despite faults")
    errors = env.sim.admin.call_counts()["errors"]
    assert errors, "faults were injected"
    env.sim.admin.clear_faults()
    env.sim.admin.set_throttle("DescribeNetworkInterfaces", None)
    time.sleep(6)  # a resync after the faults: still the same truth
    _no_leaks(env, node)
    env.check_truth(node)
    assert agent.violations == []


def test_vswitch_exhaustion_moves_on_and_says_so(env: Env) -> None:
    # First choice: the /28 (few addresses); then the /24.
    env.config(min_pool_size=0, vswitch_selection_policy="ordered",
               vswitches={ZONE: [env.vsw[2], env.vsw[1]]})
    node = env.add_node("ecs.g6.4xlarge")
    agent = env.start_agent()
    env.operator()
    _pods_ns(env, node, 30)
    wait_for(lambda: len(agent.held(node)) == 30, 120, "30 pods served")
    wait_for(lambda: env.converged(node, 0, 5), 60, "pool")
    used = {e.vswitch_id for e in env.cloud_enis(node) if e.type != "Primary"}
    assert env.vsw[1] in used
    assert env.condition(node, "VSwitchExhausted") == "True"
    assert any(e["reason"] == "VSwitchExhausted" for e in env.events(node))
    env.check_truth(node)


def test_node_deletion_leaves_nothing_in_the_cloud(env: Env) -> None:
    env.config(min_pool_size=4)
    node = env.add_node("ecs.g6.2xlarge")
    agent = env.start_agent()
    env.operator()
    _pods_ns(env, node, 6)
    wait_for(lambda: len(agent.held(node)) == 6, 60, "pods served")
    wait_for(lambda: env.converged(node, 4, 5), 60, "pool")
    assert env.tagged_leftovers()
    agent.stop()
    env.core.delete_node(node)
    wait_for(lambda: env.pool(node) is None and not env.enis(node), 60, "node resources gone")
    assert env.tagged_leftovers() == []
    assert [e for e in env.cloud_enis(node) if e.type != "Primary"] == []


def test_deleting_an_eni_resource_frees_the_cloud_eni(env: Env) -> None:
    env.config(min_pool_size=3)
    node = env.add_node("ecs.g6.xlarge")
    agent = env.start_agent()
    env.operator()
    wait_for(lambda: env.converged(node, 3, 5), 60, "pool")
    victim = next(r["metadata"]["name"] for r in env.enis(node) if not r["spec"]["primary"])
    agent.gone_enis.add(victim)
    env.custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.PLURAL_ENI, victim)
    wait_for(lambda: not env.provider.describe_enis(eni_ids=[victim]), 60, "cloud ENI deleted")
    wait_for(lambda: env.converged(node, 3, 5), 60, "pool refilled")
    assert victim not in {r["metadata"]["name"] for r in env.enis(node)}
    env.check_truth(node)
    # The primary ENI's record may go too, but the ENI itself is never touched.
    primary = next(r["metadata"]["name"] for r in env.enis(node) if r["spec"]["primary"])
    env.custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.PLURAL_ENI, primary)
    wait_for(lambda: env.converged(node, 3, 5) and primary in {
        r["metadata"]["name"] for r in env.enis(node)}, 60, "primary re-recorded")
    assert env.provider.describe_enis(eni_ids=[primary])[0].status == "InUse"


def test_enis_without_their_node_label_get_it_back(env: Env) -> None:
    """Agents watch only ENIs labelled with their node: the operator labels one that lacks
    it, whether the label goes while it runs or was missing before it started."""
    env.config(min_pool_size=2)
    node = env.add_node("ecs.g6.xlarge")
    env.start_agent()
    op = env.operator()
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool")
    names = [r["metadata"]["name"] for r in env.enis(node)]
    assert len(names) == 2

    def strip() -> None:
        for n in names:
            env.custom.patch_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.PLURAL_ENI, n,
                {"metadata": {"labels": {contract.LABEL_NODE: None}}})

    def labelled() -> bool:
        return all((cast(JSON, env.custom.get_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENI, n))["metadata"].get(
                "labels") or {}).get(contract.LABEL_NODE) == node for n in names)

    strip()
    wait_for(labelled, 30, "labels put back while running")
    op.stop()
    strip()
    assert not labelled()
    env.operator()
    wait_for(labelled, 60, "labels put back at start")
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool")
    env.check_truth(node)


def test_rounds_read_node_pool_and_enis_from_what_kopf_holds(env: Env) -> None:
    """A round takes its Node, ENIPool and ENI resources from kopf's watches (plus the
    operator's own writes), not from GETs: rounds on a converged node read none of them."""
    env.config(min_pool_size=2)
    node = env.add_node("ecs.g6.xlarge")
    env.start_agent()
    op = env.operator("--gc-interval=600")  # GC lists every Node, pool and ENI: not now
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool")

    def reads_and_rounds() -> tuple[float, float]:
        m = op.metrics()
        reads = sum(v for k, v in m.items() if k.startswith("eniway_kube_requests_total{")
                    and ('verb="get"' in k or 'verb="list"' in k)
                    and any(f'resource="{r}"' in k for r in ("nodes", "enipools", "enis")))
        rounds = sum(v for k, v in m.items() if k.startswith("eniway_reconcile_seconds_count"))
        return reads, rounds

    reads0, rounds0 = reads_and_rounds()
    for i in range(5):  # each change of the Node is a round
        env.core.patch_node(node, {"metadata": {"annotations": {"example.com/touch": str(i)}}})
        wait_for(lambda n=i: reads_and_rounds()[1] > rounds0 + n, 30, f"round {i + 1}")
    reads1, rounds1 = reads_and_rounds()
    assert rounds1 - rounds0 >= 5
    assert reads1 - reads0 == 0, (reads1 - reads0, rounds1 - rounds0)
    env.check_truth(node)


def test_gc_deletes_leaked_tagged_enis_only(env: Env) -> None:
    env.config(min_pool_size=0)
    node = env.add_node("ecs.g6.xlarge")
    env.start_agent()
    sg = [env.topo.security_group_id]
    leaked = env.provider.create_eni(env.vsw[0], sg, {
        contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE, contract.TAG_CLUSTER: env.cluster_id,
        contract.TAG_NODE: "ghost-node", contract.TAG_INSTANCE: "i-ghost0000"})
    foreign = env.provider.create_eni(env.vsw[0], sg, {"owner": "someone-else"})
    other_cluster = env.provider.create_eni(env.vsw[0], sg, {
        contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE, contract.TAG_CLUSTER: "another"})
    env.operator()
    wait_for(lambda: not env.provider.describe_enis(eni_ids=[leaked.eni_id]), 60,
             "leaked ENI collected")
    time.sleep(6)  # more GC passes: the others stay
    assert env.provider.describe_enis(eni_ids=[foreign.eni_id])
    assert env.provider.describe_enis(eni_ids=[other_cluster.eni_id])
    env.check_truth(node)
    for e in (foreign, other_cluster):
        env.provider.delete_eni(e.eni_id)


def test_changes_behind_its_back_are_picked_up(env: Env) -> None:
    """IPs assigned on an ENI that no resource records become pool IPs (and the excess is
    released); an ENI removed from the cloud loses its record and the pool is refilled."""
    env.config(min_pool_size=2, max_pool_size=5)
    node = env.add_node("ecs.g6.4xlarge")
    env.start_agent()
    env.operator()
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool")
    eni = next(e for e in env.cloud_enis(node) if e.type != "Primary")
    stray = env.provider.assign_ips(eni.eni_id, 8)  # not recorded anywhere

    def total() -> int:
        return sum(len(e.private_ips) for e in env.cloud_enis(node))

    # 2 free + 8 stray = 10 free: recorded, then released down to max_pool_size.
    wait_for(lambda: env.converged(node, 2, 5) and total() <= 5, 60,
             "stray IPs recorded then the excess released")
    env.check_truth(node)
    recorded = {i["ip"] for r in env.enis(node) for i in r["status"].get("ips") or []}
    assert set(stray) & recorded  # some of them are pool IPs now
    # Now remove the ENI from under the operator.
    env.provider.detach_eni(eni.eni_id, env.instance_id(node))
    wait_for(lambda: env.provider.describe_enis(eni_ids=[eni.eni_id])[0].status == "Available",
             30, "detached")
    env.provider.delete_eni(eni.eni_id)
    wait_for(lambda: eni.eni_id not in {r["metadata"]["name"] for r in env.enis(node)}, 60,
             "record of the vanished ENI dropped")
    wait_for(lambda: env.converged(node, 2, 5), 60, "pool refilled")
    env.check_truth(node)


def test_a_pod_that_started_is_no_longer_pending(env: Env) -> None:
    """A pod counts as pending (raising its node's free target) only while Pending: once
    it runs it leaves the count, PodIP or not (its PodIP write may be refused forever)."""
    env.config(min_pool_size=0, max_pool_size=5)
    node = env.add_node("ecs.g6.xlarge")
    env.operator()
    wait_for(lambda: env.pool(node) and env.counts(node).get("pending") == 0, 60, "pool")
    names = _pods_ns(env, node, 2, prefix="pend")
    wait_for(lambda: env.counts(node).get("pending") == 2, 60, "two pending pods")
    env.core.patch_namespaced_pod_status(names[0], env.namespace, {"status": {
        "phase": "Running", "podIP": "192.0.2.10", "podIPs": [{"ip": "192.0.2.10"}]}})
    wait_for(lambda: env.counts(node).get("pending") == 1, 60, "the running pod not pending")
    env.core.patch_namespaced_pod_status(names[1], env.namespace,
                                         {"status": {"phase": "Failed"}})
    wait_for(lambda: env.counts(node).get("pending") == 0, 60, "the failed pod not pending")
