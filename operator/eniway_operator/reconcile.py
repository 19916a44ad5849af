"""One node's reconcile: read Kubernetes and the cloud, plan, execute, record.

Runs in a worker thread (the SDK and the Kubernetes client are synchronous), one node at a
time per node (a lock per node). The cloud is the truth for which ENIs and IPs exist; the
ENI resources are the truth for what eniway recorded about each IP (state, since), and are
rewritten from the cloud view after every round, so an IP the cloud has but no resource
records is picked up on the next resync, and a resource whose cloud ENI is gone is dropped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cni_plugin import contract
from eniway_operator import config as pool_config
from eniway_operator import metrics
from eniway_operator.cloud.base import (
    CloudError,
    CloudProvider,
    InstanceInfo,
    InstanceLimits,
    InvalidState,
    NetworkInterface,
    NotFound,
    QuotaExceeded,
    SecurityGroup,
    Throttled,
    VSwitch,
    VSwitchExhausted,
)
from eniway_operator.exclusive_plan import reserved_slots
from eniway_operator.kube import JSON, Kube, iso, now_iso, parse_time
from eniway_operator.liveness import agent_problem
from eniway_operator.observe import Observer
from eniway_operator.plan import (
    ATTACHING,
    AVAILABLE,
    COND_AGENT,
    COND_CLOUD,
    COND_CONFIG,
    COND_HOTSWAP,
    COND_LIMIT,
    COND_QUOTA,
    COND_READY,
    COND_SKEW,
    COND_THROTTLED,
    COND_VSW,
    COND_WARM,
    DETACHING,
    INUSE,
    RELEASE_BATCH_WAIT,
    Action,
    AssignIPs,
    AttachENI,
    Condition,
    CreateENI,
    DeleteENI,
    DetachENI,
    ENIView,
    NodeState,
    UnassignIPs,
    plan_node,
)
from eniway_operator.skew import operator_version, skew_problem
from eniway_operator.validate import check_cloud_ids

log = logging.getLogger(__name__)

PHASE_OF = {AVAILABLE: contract.PHASE_CREATING, ATTACHING: contract.PHASE_ATTACHING,
            INUSE: contract.PHASE_INUSE, DETACHING: contract.PHASE_DETACHING}
ERROR_CONDITIONS = (COND_QUOTA, COND_THROTTLED, COND_CLOUD, COND_CONFIG)


@dataclass(frozen=True)
class Demand:
    """What pods want on a node, snapshot from the kopf indices on the event loop."""

    pending: int = 0
    pods: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)  # ip -> ns,name,uid


@dataclass(frozen=True)
class Settings:
    cluster_id: str
    config_namespace: str = "kube-system"
    config_name: str = "eniway-config"
    resync: float = 300.0  # full cloud describe at least this often per node
    instance_ttl: float = 300.0  # type and zone never change; hot-swap waits refresh sooner
    vswitch_ttl: float = 30.0
    group_ttl: float = 300.0  # configured security groups are described again this often
    tagged_ttl: float = 5.0
    config_ttl: float = 5.0
    poll: float = 0.5  # describe of every node's attaching or detaching ENIs, at once
    poll_fallback: float = 5.0  # a node with ENIs moving comes back this late at the latest
    backoff_base: float = 2.0
    backoff_max: float = 120.0
    idle_requeue: float = 60.0
    agent_timeout: float = 90.0  # an ack counts only while the agent's heartbeat moves


@dataclass
class NodeMemory:
    """What the operator remembers about a node between rounds (lost on restart: every item
    is re-derived from the cloud and the resources)."""

    view: dict[str, NetworkInterface] = field(default_factory=dict)
    view_at: float = 0.0
    dirty: bool = True  # a full describe is due
    polling: set[str] = field(default_factory=set)  # ENIs attaching or detaching
    info: InstanceInfo | None = None
    info_at: float = 0.0
    blocked: dict[str, float] = field(default_factory=dict)
    freed_at: dict[str, float] = field(default_factory=dict)
    marked_at: dict[str, float] = field(default_factory=dict)  # unknown after a restart: 0
    last_idle_reclaim: float = 0.0
    pending: int = 0  # pods waiting at the last round (the planner tells a burst from a stream)
    allocated: int = 0  # IPs pods held at the last round (pods served since count as come)
    failures: int = 0
    throttled: bool = False
    last_pool_status: JSON = field(default_factory=dict)
    last_reconciled_at: float = 0.0
    pool_uid: str = ""  # Events go to the ENIPool too
    exclusive_slots: int = 0  # exclusive-mode ENIs on the instance (as of the last describe)
    exclusive_split: int = 0  # the node's exclusive_enis setting (read by exclusive rounds)
    shared_enis: int = 0  # secondary ENIs the shared pool holds (read by exclusive rounds)


class RoundErrors:
    """Failures of one round, turned into conditions and Events."""

    def __init__(self) -> None:
        self.conditions: dict[str, Condition] = {}
        self.any = False
        self.throttled = False

    def add(self, cond: str, reason: str, message: str) -> None:
        self.any = True
        self.conditions[cond] = Condition(True, reason, message)


class Reconciler:
    def __init__(self, kube: Kube, cloud: CloudProvider, settings: Settings,
                 clock: Any = time.time) -> None:
        self.kube = kube
        self.cloud = cloud
        self.settings = settings
        self.clock = clock
        self.version = operator_version()  # compared with each agent's (skew policy)
        self.memory: dict[str, NodeMemory] = {}
        self.observer = Observer(cloud)  # describes of many nodes batched into few calls
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._limits: dict[str, InstanceLimits] = {}
        self._vsw_cache: dict[tuple[str, ...], tuple[float, tuple[VSwitch, ...]]] = {}
        self._vsw_lock = threading.Lock()
        self._vsw_static: dict[str, VSwitch] = {}
        self._sg_cache: dict[tuple[str, ...], tuple[float, tuple[SecurityGroup, ...]]] = {}
        self._tagged: tuple[float, list[NetworkInterface]] = (-1e9, [])
        self._tagged_lock = threading.Lock()
        self._cm: tuple[float, Mapping[str, Any] | Exception] = (0.0, {})
        self._beats: dict[str, tuple[str, float]] = {}  # node -> (heartbeat, first seen)
        self._beats_lock = threading.Lock()
        # The private IPs that carry a public IP (eip_controller.PublicIps.held_ips), kept
        # from release; None from it: not known yet, nothing is released.
        self.public_ips_held: Callable[[], set[str] | None] | None = None

    # -- helpers -------------------------------------------------------------------------
    def lock(self, node: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(node, threading.Lock())

    def tags_for(self, node: str, instance_id: str, extra: Mapping[str, str]) -> dict[str, str]:
        return {**extra, contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                contract.TAG_CLUSTER: self.settings.cluster_id,
                contract.TAG_NODE: node, contract.TAG_INSTANCE: instance_id}

    def managed(self, eni: NetworkInterface) -> bool:
        """Ours: tagged by eniway for this cluster. Nothing else is ever modified."""
        return (eni.tags.get(contract.TAG_CREATOR) == contract.TAG_CREATOR_VALUE
                and eni.tags.get(contract.TAG_CLUSTER) == self.settings.cluster_id)

    def exclusive(self, eni: NetworkInterface) -> bool:
        """Ours, and owned whole by a pod (exclusive mode): not the shared pool's."""
        return self.managed(eni) and eni.tags.get(contract.TAG_MODE) == contract.TAG_MODE_EXCLUSIVE

    def _shared_resources(self, name: str) -> dict[str, JSON]:
        """The node's ENI resources the shared pool owns (exclusive ones move between nodes
        with their pods and are recorded by their own reconcile)."""
        return {r["metadata"]["name"]: r for r in self.kube.enis_of(name)
                if not exclusive_resource(r)}

    def global_config(self) -> Mapping[str, Any]:
        at, value = self._cm
        if self.clock() - at > self.settings.config_ttl:
            try:
                data = self.kube.get_configmap(self.settings.config_namespace,
                                               self.settings.config_name)
                src = f"configmap {self.settings.config_namespace}/{self.settings.config_name}"
                value = pool_config.from_configmap(data, src)
            except pool_config.ConfigError as e:
                value = e
            self._cm = (self.clock(), value)
        if isinstance(value, Exception):
            raise value
        return value

    def limits(self, instance_type: str) -> InstanceLimits:
        if instance_type not in self._limits:
            self._limits[instance_type] = self.cloud.instance_limits(instance_type)
        return self._limits[instance_type]

    # -- the round -----------------------------------------------------------------------
    def reconcile(self, node_name: str, demand: Demand) -> float | None:
        """One round for a node; returns when to come back (None: forget the node)."""
        t0 = time.monotonic()
        result = "ok"
        try:
            with self.lock(node_name):
                return self._reconcile(node_name, demand)
        except Exception:
            result = "error"
            raise
        finally:
            metrics.RECONCILE.labels(result).observe(time.monotonic() - t0)

    def _reconcile(self, name: str, demand: Demand) -> float | None:
        node = self.kube.node(name)
        if node is None or node["metadata"].get("deletionTimestamp"):
            return self._teardown(name)
        mem = self.memory.setdefault(name, NodeMemory())
        now = self.clock()
        instance_id = instance_of(node)
        if not instance_id:
            self.kube.node_event(name, "NoInstanceID",
                                 "spec.providerID is neither <region>.<instance-id> nor "
                                 "aws:///<zone>/<instance-id>: not managed",
                                 uid=node["metadata"].get("uid", ""))
            return 60.0
        found_pool = self.kube.pool(name)
        if found_pool is not None:
            mem.pool_uid = found_pool["metadata"].get("uid", "")
        errors = RoundErrors()

        # Instance and limits (described afresh with the node's ENIs: it lists them)
        refresh = mem.dirty or now - mem.view_at >= self.settings.resync
        try:
            info = self._instance(mem, instance_id, now, fresh=refresh)
            limits = self.limits(info.instance_type)
        except CloudError as e:
            pool = found_pool or self._create_pool(
                name, mem, node, {"nodeName": name, "instanceId": instance_id})
            self._cloud_failure(name, node, mem, errors, "DescribeInstance", e)
            self._write_pool_status(name, pool, mem, None, None, None, errors, now)
            return self._backoff(mem, errors)

        spec_want = {"nodeName": name, "instanceId": instance_id,
                     "instanceType": info.instance_type, "zoneId": info.zone_id,
                     "vpcId": info.vpc_id}
        if found_pool is None:  # created whole: one write, not a create and a patch
            pool = self._create_pool(name, mem, node, spec_want)
        elif any(found_pool["spec"].get(k) != v for k, v in spec_want.items()):
            pool = self.kube.patch_pool(name, {"spec": spec_want})
        else:
            pool = found_pool

        # Configuration in effect: every problem reported, what is valid used
        try:
            merged = pool_config.merge_report(
                (self.global_config(), self._configmap_source()),
                (pool_config.from_annotation(node["metadata"].get("annotations"),
                                             f"node {name}"), f"node {name} annotation"),
                (pool["spec"].get("config") or {}, f"enipool {name} spec.config"))
        except pool_config.ConfigError as e:  # a whole document unreadable: nothing to go on
            errors.add(COND_CONFIG, "ConfigInvalid", str(e))
            self._config_event(name, node, pool, str(e))
            self._write_pool_status(name, pool, mem, limits, None, None, errors, now)
            return 30.0
        cfg = merged.config

        # Cloud view and the ENI resources
        resources = self._shared_resources(name)
        try:
            if refresh:
                self._refresh_view(name, mem, info, resources)
            elif mem.polling:
                self._poll(name, mem, instance_id)
            self._cleanup_deleting(name, mem, resources)
            found_vsw = self._vswitches(cfg, info.zone_id, now)
            found_sg = self._groups(cfg, now)
        except CloudError as e:
            self._cloud_failure(name, node, mem, errors, e.api or "DescribeNetworkInterfaces", e)
            self._write_pool_status(name, pool, mem, limits, cfg, None, errors, now)
            return self._backoff(mem, errors)
        cfg, bad_ids = check_cloud_ids(cfg, merged.origin, info.zone_id, info.vpc_id,
                                       {v.vswitch_id: v for v in found_vsw},
                                       {g.security_group_id: g for g in found_sg})
        vswitches = tuple(v for v in found_vsw if v.vswitch_id in cfg.vswitches_for(info.zone_id))
        problems = [*merged.problems, *bad_ids]
        if problems:  # not a failed round: the node goes on with what is valid
            message = "; ".join(problems)
            errors.conditions[COND_CONFIG] = Condition(True, "ConfigInvalid", message)
            self._config_event(name, node, pool, message)
        self._ensure_resources(name, mem, instance_id, resources, vswitches, cfg)

        # Plan
        agent = (pool.get("status") or {}).get("agent") or {}
        allocated = set(demand.pods) | set(agent.get("allocated") or [])
        # An IP the agent handed out whose PodIP has not reached the index yet is held by a
        # pod still counted as waiting: counting both would ask for its IP twice.
        pending = max(demand.pending - len(allocated - set(demand.pods)), 0)
        on_primary = limits.pods_on_primary_eni
        states = self._ip_states(mem, resources, allocated, set(self._release(pool)), now,
                                 on_primary)
        cooling = frozenset(ip for ip, t in mem.freed_at.items()
                            if now - t < cfg.ip_cooldown)
        mem.freed_at = {ip: t for ip, t in mem.freed_at.items() if now - t < cfg.ip_cooldown}
        free_since = {ip: s[1] for ip, s in states.items() if s[0] == contract.IP_FREE}
        warmed = _condition_true(pool, COND_WARM)
        state = NodeState(
            limits=limits, config=cfg, now=now, zone_id=info.zone_id,
            instance_running=info.status != "Stopped",
            enis=tuple(self._views(mem, resources, now)),
            allocated=frozenset(allocated), free_since=free_since, cooling=cooling,
            release=frozenset(self._release(pool)), marked_at=dict(mem.marked_at),
            acknowledged=self._acknowledged(name, pool),
            pending=pending, pending_before=mem.pending,
            allocated_before=mem.allocated, vswitches=vswitches,
            default_vswitch=info.vswitch_id, blocked_vswitches=dict(mem.blocked),
            warmed_up=warmed, last_idle_reclaim=mem.last_idle_reclaim,
            reserved_slots=reserved_slots(cfg.exclusive_enis, mem.exclusive_slots))
        plan = plan_node(state)
        mem.exclusive_split = cfg.exclusive_enis
        mem.shared_enis = len([e for e in state.enis if not e.primary
                               and e.status in (ATTACHING, INUSE, DETACHING)])
        mem.marked_at = {ip: mem.marked_at.get(ip, now) for ip in plan.release}
        mem.pending = pending
        mem.allocated = len(allocated)
        if plan.idle_reclaimed:
            mem.last_idle_reclaim = now

        # Execute: release marks first, so the agent sees them; then the cloud calls.
        if plan.release != state.release:
            self._set_release(name, pool, plan.release, state.release)
        for action in plan.actions:
            try:
                self._do(action, name, node, mem, instance_id, cfg, demand, resources)
            except CloudError as e:
                self._cloud_failure(name, node, mem, errors, type(action).__name__, e, action,
                                    cfg.vswitch_block_duration)
                if isinstance(e, Throttled | VSwitchExhausted | QuotaExceeded):
                    break

        # Record (re-read only what this round changed)
        if plan.actions:
            resources = self._shared_resources(name)
        if plan.actions or plan.release != state.release:
            pool = self.kube.pool(name) or pool
        states = self._ip_states(mem, resources, allocated, set(self._release(pool)), now,
                                 on_primary)
        self._write_eni_statuses(mem, resources, states, demand.pods, now, on_primary)
        counts = self._counts(mem, states, pending, on_primary)
        metrics.set_pool(name, counts)
        conditions = dict(plan.conditions)
        blocked = sorted(v for v, until in mem.blocked.items() if until > now)
        if blocked and not conditions.get(COND_VSW, Condition(False, "", "")).status:
            conditions[COND_VSW] = Condition(
                True, "VSwitchBlocked",
                f"{', '.join(blocked)} ran out of IPs; other vSwitches are used meanwhile")
        conditions[COND_WARM] = Condition(plan.warmed_up, "WarmUp",
                                          "warm-up done" if plan.warmed_up else "warming up")
        agent_version = str(((pool.get("status") or {}).get("agent") or {}).get("version") or "")
        skewed = skew_problem(self.version, agent_version)
        conditions[COND_SKEW] = Condition(bool(skewed), "VersionSkew" if skewed else "Supported",
                                          skewed)
        beat, still_for = self._heartbeat(name, pool)
        down = agent_problem(beat, still_for, self.settings.agent_timeout,
                             bool(((pool.get("status") or {}).get("agent") or {}).get(
                                 "ready", True)))
        conditions[COND_AGENT] = Condition(bool(down), "AgentUnresponsive" if down else
                                           "Heartbeat", down)
        self._write_pool_status(name, pool, mem, limits, cfg, counts, errors, now,
                                conditions)
        max_pods = str(limits.max_pods)
        if (node["metadata"].get("annotations") or {}).get(
                contract.ANNOTATION_MAX_PODS) != max_pods:
            self.kube.annotate_node(name, {contract.ANNOTATION_MAX_PODS: max_pods})
        for cond in (COND_HOTSWAP, COND_LIMIT, COND_VSW, COND_SKEW, COND_AGENT):
            c = conditions.get(cond)
            if c and c.status and not _condition_true(pool, cond):
                self._event(name, node, c.reason, c.message, warning=cond != COND_LIMIT)

        if errors.any:
            return self._backoff(mem, errors)
        mem.failures = 0
        moving = {e.eni_id for e in mem.view.values() if e.status in (ATTACHING, DETACHING)}
        if moving:  # the shared poll (poll_moving) calls the node back once they settle
            mem.polling |= moving
            return self.settings.poll_fallback
        if plan.actions or plan.release != state.release:
            return 0.2  # look again at once: the next step may depend on this one
        if conditions.get(COND_HOTSWAP, Condition(False, "", "")).status:
            mem.info_at = 0.0  # watch for the instance to stop
            return 5.0
        resync_due = mem.view_at + self.settings.resync - self.clock()
        if plan.release:  # listed IPs go once acknowledged and their batch wait is over
            return max(0.5, min(RELEASE_BATCH_WAIT, resync_due))
        return max(0.5, min(self.settings.idle_requeue, resync_due))

    def _create_pool(self, name: str, mem: NodeMemory, node: JSON, spec: JSON) -> JSON:
        pool = self.kube.create_pool(name, spec, node)
        mem.pool_uid = pool["metadata"].get("uid", "")
        return pool

    # -- reading -------------------------------------------------------------------------
    def _instance(self, mem: NodeMemory, instance_id: str, now: float,
                  fresh: bool = False) -> InstanceInfo:
        if (fresh or mem.info is None or mem.info.instance_id != instance_id
                or now - mem.info_at >= self.settings.instance_ttl):
            mem.info = self.observer.instance(instance_id)
            mem.info_at = now
        return mem.info

    def _vswitches(self, cfg: pool_config.PoolConfig, zone: str,
                   now: float) -> tuple[VSwitch, ...]:
        """The zone's configured vSwitches that exist (one describe each, cached)."""
        ids = cfg.vswitches_for(zone)
        if not ids:
            return ()
        with self._vsw_lock:
            at, cached = self._vsw_cache.get(ids, (0.0, ()))
            if now - at >= self.settings.vswitch_ttl:
                found: list[VSwitch] = []
                for vid in ids:
                    with contextlib.suppress(NotFound):
                        found += self.cloud.describe_vswitches([vid])
                cached = tuple(found)
                self._vsw_cache[ids] = (now, cached)
        return cached

    def _groups(self, cfg: pool_config.PoolConfig, now: float) -> tuple[SecurityGroup, ...]:
        """The configured security groups that exist, described again when the list
        changes or after ``group_ttl``."""
        ids = cfg.security_group_ids
        if not ids:
            return ()
        with self._vsw_lock:
            at, cached = self._sg_cache.get(ids, (-1e9, ()))
            if now - at >= self.settings.group_ttl:
                cached = tuple(self.cloud.describe_security_groups(list(ids)))
                self._sg_cache[ids] = (now, cached)
        return cached

    def _event(self, name: str, node: JSON, reason: str, message: str,
               warning: bool = True) -> None:
        """On the Node and on its ENIPool (``kubectl describe enipool`` shows it)."""
        mem = self.memory.get(name)
        self.kube.node_event(name, reason, message, warning, uid=node["metadata"].get("uid", ""),
                             pool_uid=mem.pool_uid if mem else "")

    def _configmap_source(self) -> str:
        return f"configmap {self.settings.config_namespace}/{self.settings.config_name}"

    def _config_event(self, name: str, node: JSON, pool: JSON, message: str) -> None:
        """One Event per new set of problems (the condition keeps saying it meanwhile)."""
        for c in (pool.get("status") or {}).get("conditions") or []:
            if c.get("type") == COND_CONFIG and c.get("status") == "True" and \
                    c.get("message") == message:
                return
        self._event(name, node, "ConfigInvalid", message)

    def _one_vswitch(self, vswitch_id: str) -> VSwitch | None:
        """A vSwitch's CIDR and gateway for an ENI record (they never change: cached)."""
        with self._vsw_lock:
            for _, cached in self._vsw_cache.values():
                for v in cached:
                    if v.vswitch_id == vswitch_id:
                        return v
            known = self._vsw_static.get(vswitch_id)
        if known is not None:
            return known
        try:
            found = self.cloud.describe_vswitches([vswitch_id])
        except CloudError:
            return None
        if found:
            with self._vsw_lock:
                self._vsw_static[vswitch_id] = found[0]
        return found[0] if found else None

    def _refresh_view(self, name: str, mem: NodeMemory, info: InstanceInfo,
                      resources: Mapping[str, JSON]) -> None:
        """The node's ENIs: those the instance lists (described just now), those recorded
        or remembered, and this cluster's unattached ones tagged for the node, described by
        id in calls shared with the other nodes. Exclusive-mode ENIs only take slots."""
        instance_id = info.instance_id
        found = self.observer.enis.get(sorted({*info.eni_ids, *resources, *mem.view}))
        view = {i: e for i, e in found.items() if e.instance_id == instance_id or (
            e.status == AVAILABLE and self.managed(e) and e.tags.get(contract.TAG_NODE) == name)}
        mem.exclusive_slots = len([e for e in view.values() if self.exclusive(e)
                                   and e.status in (ATTACHING, INUSE, DETACHING)])
        view = {k: e for k, e in view.items() if not self.exclusive(e)}
        for e in self._tagged_available():
            if e.eni_id not in view and e.tags.get(contract.TAG_NODE) == name and (
                    e.tags.get(contract.TAG_INSTANCE) or "") in ("", instance_id):
                view[e.eni_id] = e
        for eni_id in set(resources) - set(view):
            if not resources[eni_id]["metadata"].get("deletionTimestamp"):
                # The cloud ENI is gone (or left this instance): the record goes too.
                log.info("node %s: ENI %s is gone from the cloud; dropping its record",
                         name, eni_id)
                self.kube.release_eni(eni_id)
                metrics.GC_DELETED.labels("eni_resource").inc()
        mem.view = {k: v for k, v in view.items() if v.status != "CreateFailed"}
        mem.view_at = self.clock()
        mem.dirty = False
        mem.polling.clear()

    def _tagged_available(self) -> list[NetworkInterface]:
        """This cluster's Available ENIs (created, not attached), for every node at once.
        Shared for a few seconds: only this (leading) process creates ENIs and it keeps
        those in its node views, so a short-lived copy cannot hide a fresh one; what it
        finds are leftovers of a previous process (a create whose answer was lost)."""
        with self._tagged_lock:
            at, cached = self._tagged
            now = time.monotonic()
            if now - at >= self.settings.tagged_ttl:
                cached = self.cloud.describe_enis(status=AVAILABLE, tags={
                    contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                    contract.TAG_CLUSTER: self.settings.cluster_id})
                self._tagged = (now, cached)
            return [e for e in cached
                    if e.status == AVAILABLE and self.managed(e) and not self.exclusive(e)]

    def _forget_tagged(self) -> None:
        with self._tagged_lock:
            self._tagged = (-1e9, [])

    def _poll(self, name: str, mem: NodeMemory, instance_id: str) -> None:
        """While ENIs attach or detach, describe only those, not the node."""
        found = self.observer.enis.get(sorted(mem.polling))
        for eni_id in list(mem.polling):
            e = found.get(eni_id)
            ours = e is not None and not self.exclusive(e) and (e.instance_id == instance_id or (
                e.status == AVAILABLE and self.managed(e)
                and e.tags.get(contract.TAG_NODE) == name))
            if e is not None and ours:
                mem.view[eni_id] = e
            else:
                mem.view.pop(eni_id, None)
                mem.dirty = True  # something unexpected: look at everything next time
            if e is None or e.status not in (ATTACHING, DETACHING):
                mem.polling.discard(eni_id)

    def poll_moving(self) -> set[str]:
        """The nodes whose attaching or detaching ENIs have settled (or are gone): one
        describe by id for every node's moving ENIs together (100 a call), every
        ``poll`` seconds, in place of a round per node and poll. The node's next round
        reads them again (batched with the other nodes called back)."""
        moving = self._moving()
        if not moving:
            return set()
        found = self.observer.enis.get(sorted(moving))
        return {name for eni_id, name in moving.items()
                if (e := found.get(eni_id)) is None or e.status not in (ATTACHING, DETACHING)}

    def _moving(self) -> dict[str, str]:
        """ENI -> node of every node's polled ENIs, read without the nodes' locks (a round
        changing a set meanwhile makes the copy start over)."""
        while True:
            try:
                return {eni_id: name for name, mem in tuple(self.memory.items())
                        for eni_id in tuple(mem.polling)}
            except RuntimeError:  # changed size during the copy
                continue

    def _describe_one(self, eni_id: str) -> NetworkInterface | None:
        return self.observer.enis.get([eni_id]).get(eni_id)

    # -- ENI resources -------------------------------------------------------------------
    def _ensure_resources(self, name: str, mem: NodeMemory, instance_id: str,
                          resources: dict[str, JSON], vswitches: tuple[VSwitch, ...],
                          cfg: pool_config.PoolConfig) -> None:
        cidrs = {v.vswitch_id: v for v in vswitches}
        for e in mem.view.values():
            if e.eni_id in resources:
                continue
            primary = e.type == "Primary"
            if not primary and not self.managed(e):
                continue  # someone else's ENI: not ours to record or use
            resources[e.eni_id] = self._record(name, instance_id, e, cidrs.get(e.vswitch_id))

    def _record(self, name: str, instance_id: str, e: NetworkInterface,
                vsw: VSwitch | None) -> JSON:
        spec: JSON = {
            "nodeName": name, "instanceId": instance_id, "primary": e.type == "Primary",
            "managed": self.managed(e), "vpcId": e.vpc_id, "zoneId": e.zone_id,
            "vSwitchId": e.vswitch_id, "primaryIP": e.primary_ip,
            "deleteOnRelease": e.delete_on_release,
        }
        if e.mac:
            spec["macAddress"] = e.mac
        if e.device_index is not None:
            spec["deviceIndex"] = e.device_index
        if e.security_group_ids:
            spec["securityGroupIds"] = list(e.security_group_ids)[:5]
        if vsw is None:
            vsw = self._one_vswitch(e.vswitch_id)
        if vsw is not None:
            spec["vSwitchCidr"] = vsw.cidr
            spec["gatewayIP"] = vsw.gateway
        spec = {k: v for k, v in spec.items() if v != ""}
        # No status yet: the round ends by writing every record's status from the cloud
        # view (one write per ENI and round, not one here and another there).
        return self.kube.create_eni(e.eni_id, name, spec, None)

    def _ip_states(self, mem: NodeMemory, resources: Mapping[str, JSON], allocated: set[str],
                   release: set[str], now: float, on_primary: bool = False,
                   ) -> dict[str, tuple[str, float]]:
        """IP -> (state, since) for the pod IPs of the node's ENIs in the cloud view (the
        secondary ENIs', and the primary's where the cloud has pods on it: ``on_primary``).
        A state change restarts ``since``; an IP a pod gave back starts its cooldown."""
        old: dict[str, tuple[str, float]] = {}
        for r in resources.values():
            for entry in (r.get("status") or {}).get("ips") or []:
                old[entry["ip"]] = (entry.get("state", ""), parse_time(entry.get("since")) or now)
        out = {}
        for e in mem.view.values():
            if not serves_pods(e, on_primary):
                continue
            for ip in e.private_ips:
                if ip in allocated:
                    st = contract.IP_ALLOCATED
                elif ip in release:
                    st = contract.IP_RELEASING
                else:
                    st = contract.IP_FREE
                prev = old.get(ip)
                if prev and prev[0] == st:
                    out[ip] = prev
                else:
                    out[ip] = (st, now)
                    if prev and prev[0] == contract.IP_ALLOCATED and st == contract.IP_FREE:
                        mem.freed_at[ip] = now
        return out

    def _views(self, mem: NodeMemory, resources: Mapping[str, JSON], now: float,
               ) -> list[ENIView]:
        out = []
        for e in mem.view.values():
            r = resources.get(e.eni_id)
            status = (r or {}).get("status") or {}
            empty_since = parse_time(status.get("emptySince"))
            if not e.private_ips and empty_since is None:
                empty_since = now
            out.append(ENIView(
                eni_id=e.eni_id, status=e.status, vswitch_id=e.vswitch_id, ips=e.private_ips,
                primary=e.type == "Primary", managed=self.managed(e),
                empty_since=empty_since if not e.private_ips else None,
                deleting=bool(r and r["metadata"].get("deletionTimestamp"))))
        return out

    def _write_eni_statuses(self, mem: NodeMemory, resources: Mapping[str, JSON],
                            states: Mapping[str, tuple[str, float]],
                            pods: Mapping[str, tuple[str, str, str]], now: float,
                            on_primary: bool = False) -> None:
        for eni_id, r in resources.items():
            e = mem.view.get(eni_id)
            if e is None or r["metadata"].get("deletionTimestamp"):
                continue
            ips = []
            if serves_pods(e, on_primary):  # the agent serves what is listed here
                for ip in e.private_ips:
                    st, since = states.get(ip, (contract.IP_FREE, now))
                    entry: JSON = {"ip": ip, "state": st, "since": iso(since)}
                    pod = pods.get(ip)
                    if st == contract.IP_ALLOCATED and pod:
                        entry.update(podNamespace=pod[0], podName=pod[1], podUID=pod[2])
                    ips.append(entry)
            old = r.get("status") or {}
            empty = parse_time(old.get("emptySince")) if not ips else None
            phase = PHASE_OF.get(e.status, contract.PHASE_CREATING)
            if e.status == AVAILABLE and old.get("phase") in (contract.PHASE_INUSE,
                                                              contract.PHASE_DETACHING):
                phase = contract.PHASE_DETACHING  # detached, about to be deleted
            status: JSON = {
                "phase": phase,
                "ipCount": len(ips),
                "freeCount": len([i for i in ips if i["state"] == contract.IP_FREE]),
                "ips": ips,
                "emptySince": iso(empty if empty is not None else now) if (
                    not ips and e.type != "Primary") else None,
            }
            cmp = {k: v for k, v in old.items() if k in status}
            if any(cmp.get(k) != v for k, v in status.items() if v is not None) or (
                    status["emptySince"] is None and old.get("emptySince")):
                self.kube.patch_eni_status(eni_id, status)
            spec_fix: JSON = {}
            if e.mac and r["spec"].get("macAddress") != e.mac:
                spec_fix["macAddress"] = e.mac
            if e.device_index is not None and r["spec"].get("deviceIndex") != e.device_index:
                spec_fix["deviceIndex"] = e.device_index
            if spec_fix:
                self.kube.patch_eni_spec(eni_id, spec_fix)

    def _counts(self, mem: NodeMemory, states: Mapping[str, tuple[str, float]],
                pending: int, on_primary: bool = False) -> dict[str, int]:
        """ENIPool status.counts: secondary ENIs, and the pod IPs of every ENI serving pods."""
        inuse = [e for e in mem.view.values()
                 if e.type != "Primary" and e.status in (ATTACHING, INUSE)]
        usable = {ip for e in mem.view.values() if e.status == INUSE and serves_pods(
            e, on_primary) for ip in e.private_ips}
        by = [states[ip][0] for ip in usable if ip in states]
        return {"enis": len(inuse), "total": len(usable),
                "free": by.count(contract.IP_FREE),
                "allocated": by.count(contract.IP_ALLOCATED),
                "releasing": by.count(contract.IP_RELEASING), "pending": pending}

    # -- ENIPool -------------------------------------------------------------------------
    @staticmethod
    def _release(pool: JSON) -> list[str]:
        return list(((pool.get("spec") or {}).get("release") or {}).get("ips") or [])

    def _set_release(self, name: str, pool: JSON, new: frozenset[str],
                     old: frozenset[str]) -> None:
        """A new token whenever an IP joins the list: an acknowledgement given for an
        earlier list (the IP may have been unlisted and handed to a pod since) no longer
        counts. Dropping IPs keeps the token: what is still listed was listed throughout."""
        release = (pool.get("spec") or {}).get("release") or {}
        requested, token = release.get("requestedAt"), release.get(contract.RELEASE_TOKEN)
        if new - old or not requested or not token:
            requested, token = now_iso(), uuid.uuid4().hex
        body = {"spec": {"release": {"ips": sorted(new, key=_ip_key), "requestedAt": requested,
                                     contract.RELEASE_TOKEN: token}}}
        pool.update(self.kube.patch_pool(name, body))

    def _acknowledged(self, name: str, pool: JSON) -> frozenset[str]:
        """The agent's acknowledgements, if they answer the current release request (its
        token echoed) and the agent is alive (its heartbeat moved within agent_timeout, on
        this process's clock); otherwise none."""
        token = ((pool.get("spec") or {}).get("release") or {}).get(contract.RELEASE_TOKEN)
        agent = (pool.get("status") or {}).get("agent") or {}
        if not token or agent.get(contract.AGENT_RELEASE_TOKEN) != token:
            return frozenset()
        beat, still_for = self._heartbeat(name, pool)
        if not beat or still_for >= self.settings.agent_timeout:
            return frozenset()
        return frozenset(agent.get("acknowledged") or [])

    def _heartbeat(self, name: str, pool: JSON) -> tuple[str, float]:
        """The agent's heartbeat and for how long (this process's clock) it has not moved;
        "" and how long this process has known the pool if it never reported."""
        beat = str(((pool.get("status") or {}).get("agent") or {}).get("heartbeat") or "")
        now = time.monotonic()
        with self._beats_lock:
            seen = self._beats.get(name)
            if seen is None or seen[0] != beat:
                seen = self._beats[name] = (beat, now)
        return beat, now - seen[1]

    def _write_pool_status(self, name: str, pool: JSON, mem: NodeMemory,
                           limits: InstanceLimits | None, cfg: pool_config.PoolConfig | None,
                           counts: Mapping[str, int] | None, errors: RoundErrors, now: float,
                           conditions: Mapping[str, Condition] | None = None) -> None:
        conds = dict(conditions or {})
        for c in ERROR_CONDITIONS:
            conds[c] = Condition(False, "OK", "")
        conds.update(errors.conditions)
        # A full node is not an unhealthy one: LimitReached stands on its own.
        problems = [c for c, v in conds.items() if v.status and c not in (COND_WARM, COND_LIMIT)]
        conds[COND_READY] = Condition(
            not problems and cfg is not None, "Reconciled" if not problems else "Degraded",
            ", ".join(sorted(problems)))
        old_status = pool.get("status") or {}
        old_conds = {c["type"]: c for c in old_status.get("conditions") or []}
        out_conds = []
        for ctype, cond in sorted(conds.items()):
            st = "True" if cond.status else "False"
            prev = old_conds.get(ctype)
            since = prev["lastTransitionTime"] if prev and prev.get("status") == st and \
                prev.get("lastTransitionTime") else now_iso()
            entry = {"type": ctype, "status": st, "reason": cond.reason,
                     "lastTransitionTime": since}
            if cond.message:
                entry["message"] = cond.message
            out_conds.append(entry)
        status: JSON = {"conditions": out_conds,
                        "observedGeneration": pool["metadata"].get("generation", 0)}
        if limits is not None:
            status["limits"] = {"enis": limits.max_enis, "ipsPerENI": limits.ips_per_eni,
                                "maxPods": limits.max_pods, "hotSwap": limits.hot_swap,
                                "source": limits.source}
        if cfg is not None:
            status["config"] = cfg.to_status()
        if counts is not None:
            status["counts"] = dict(counts)
        if status != mem.last_pool_status or now - mem.last_reconciled_at >= 60:
            body = dict(status, lastReconciled=now_iso())
            self.kube.patch_pool_status(name, body)
            mem.last_pool_status = status
            mem.last_reconciled_at = now

    # -- acting --------------------------------------------------------------------------
    def _do(self, action: Action, name: str, node: JSON, mem: NodeMemory, instance_id: str,
            cfg: pool_config.PoolConfig, demand: Demand, resources: dict[str, JSON]) -> None:
        log.info("node %s: %s", name, action)
        if isinstance(action, CreateENI):
            sgs = list(cfg.security_group_ids) or self._primary_groups(mem)
            eni = self.cloud.create_eni(
                action.vswitch_id, sgs, self.tags_for(name, instance_id, cfg.eni_tags),
                description=f"eniway pod ENI for node {name}",
                secondary_ip_count=action.ip_count,
                client_token=f"eniway-{uuid.uuid4().hex[:24]}",
                delete_on_release=cfg.delete_on_release)
            mem.view[eni.eni_id] = eni
            resources[eni.eni_id] = self._record(name, instance_id, eni, None)
            self.cloud.attach_eni(eni.eni_id, instance_id)
            mem.view[eni.eni_id] = replace(eni, status=ATTACHING, instance_id=instance_id)
            mem.polling.add(eni.eni_id)  # its status (Attaching, IPs) is written at the end
        elif isinstance(action, AttachENI):
            self._forget_tagged()
            self.cloud.attach_eni(action.eni_id, instance_id)
            mem.view[action.eni_id] = replace(mem.view[action.eni_id], status=ATTACHING,
                                              instance_id=instance_id)
            mem.polling.add(action.eni_id)
        elif isinstance(action, AssignIPs):
            got = self.cloud.assign_ips(action.eni_id, action.count,
                                        client_token=f"eniway-{uuid.uuid4().hex[:24]}")
            e = mem.view[action.eni_id]
            mem.view[action.eni_id] = replace(e, private_ips=tuple(
                dict.fromkeys((*e.private_ips, *got))))
        elif isinstance(action, UnassignIPs):
            self._unassign(name, mem, action, demand)
        elif isinstance(action, DetachENI):
            if mem.view[action.eni_id].private_ips and not self._all_released(
                    name, mem.view[action.eni_id].private_ips, demand):
                mem.dirty = True  # the handshake moved since the plan: plan again
                return
            self.cloud.detach_eni(action.eni_id, instance_id)
            mem.view[action.eni_id] = replace(mem.view[action.eni_id], status=DETACHING)
            mem.polling.add(action.eni_id)
        elif isinstance(action, DeleteENI):
            self._forget_tagged()
            with contextlib.suppress(NotFound):
                self.cloud.delete_eni(action.eni_id)
            mem.view.pop(action.eni_id, None)
            self.kube.release_eni(action.eni_id)
            resources.pop(action.eni_id, None)

    def _releasable(self, name: str, ips: Sequence[str], demand: Demand
                    ) -> tuple[list[str], JSON]:
        """Re-read the handshake at the moment of acting: of ``ips``, those still listed,
        acknowledged for the current request by a live agent, and held by no witness: the
        agent's allocations, PodIPs and the pods' own ``status.podIPs`` on the node (and
        the pool as read)."""
        pool = self.kube.get_pool(name) or {}
        listed = set(self._release(pool))
        acked = self._acknowledged(name, pool)
        agent = (pool.get("status") or {}).get("agent") or {}
        candidates = [ip for ip in ips if ip in listed and ip in acked]
        if not candidates:
            return [], pool
        held = set(agent.get("allocated") or []) | set(demand.pods) | self.kube.held_ips(name)
        if self.public_ips_held is not None:  # an IP with an EIP goes only once it is off
            with_eip = self.public_ips_held()
            if with_eip is None:  # not yet known: nothing goes
                return [], pool
            held |= with_eip
        return [ip for ip in candidates if ip not in held], pool

    def _all_released(self, name: str, ips: Sequence[str], demand: Demand) -> bool:
        return len(self._releasable(name, ips, demand)[0]) == len(ips)

    def _unassign(self, name: str, mem: NodeMemory, action: UnassignIPs, demand: Demand) -> None:
        """Only IPs the handshake still allows go back to the cloud."""
        ok, pool = self._releasable(name, action.ips, demand)
        if not ok:
            return
        try:
            self.cloud.unassign_ips(action.eni_id, ok)
        except NotFound:
            mem.dirty = True  # some were gone already: the resync tells which
        e = mem.view[action.eni_id]
        mem.view[action.eni_id] = replace(
            e, private_ips=tuple(ip for ip in e.private_ips if ip not in ok))
        pool = self.kube.get_pool(name) or pool
        remaining = [ip for ip in self._release(pool) if ip not in ok]
        # Only the list shrinks: the request (token, requestedAt) stays the same.
        self.kube.patch_pool(name, {"spec": {"release": {"ips": remaining}}})

    def _primary_groups(self, mem: NodeMemory) -> list[str]:
        for e in mem.view.values():
            if e.type == "Primary" and e.security_group_ids:
                return list(e.security_group_ids)
        raise CloudError("NoSecurityGroup", "no security_group_ids configured and the "
                         "primary ENI's groups are unknown", api="CreateNetworkInterface")

    def _cloud_failure(self, name: str, node: JSON, mem: NodeMemory, errors: RoundErrors,
                       what: str, e: CloudError, action: Action | None = None,
                       block_for: float = 300.0) -> None:
        mem.dirty = True
        if isinstance(e, VSwitchExhausted):
            vsw = action.vswitch_id if isinstance(action, CreateENI) else (
                mem.view[action.eni_id].vswitch_id
                if isinstance(action, AssignIPs) and action.eni_id in mem.view else "")
            if vsw:
                mem.blocked[vsw] = self.clock() + block_for
            with self._vsw_lock:
                self._vsw_cache.clear()  # free counts changed: describe again
            errors.add(COND_VSW, "VSwitchExhausted", f"{vsw}: {e}")
            self._event(name, node, "VSwitchExhausted", f"{vsw} has no free IP: {e}")
            errors.any = True
            return
        if isinstance(e, Throttled):
            errors.throttled = True
            errors.add(COND_THROTTLED, "Throttled", f"{what}: {e}")
        elif isinstance(e, QuotaExceeded):
            errors.add(COND_QUOTA, "QuotaExceeded", f"{what}: {e}")
        elif isinstance(e, InvalidState):
            mem.info_at = 0.0
            errors.add(COND_CLOUD, "InvalidState", f"{what}: {e}")
        else:
            errors.add(COND_CLOUD, e.code or type(e).__name__, f"{what}: {e}")
        log.warning("node %s: %s failed: %s", name, what, e)
        self._event(name, node, f"{what}Failed", str(e))

    def _backoff(self, mem: NodeMemory, errors: RoundErrors) -> float:
        mem.failures += 1
        base = self.settings.backoff_base * (4 if errors.throttled else 1)
        if errors.conditions.keys() == {COND_VSW}:
            return 0.5  # another vSwitch may do: replan at once
        return float(min(base * 2 ** (mem.failures - 1), self.settings.backoff_max))

    # -- deletion ------------------------------------------------------------------------
    def _cleanup_deleting(self, name: str, mem: NodeMemory, resources: dict[str, JSON]) -> None:
        for eni_id, r in list(resources.items()):
            if r["metadata"].get("deletionTimestamp"):
                if self.cleanup_eni(r, mem.view.get(eni_id)):
                    self.kube.release_eni(eni_id)
                    mem.view.pop(eni_id, None)
                    resources.pop(eni_id, None)
                else:
                    mem.dirty = True

    def cleanup_eni(self, r: JSON, known: NetworkInterface | None = None) -> bool:
        """Free the cloud side of one ENI resource. True once nothing is left to do.
        The primary ENI and ENIs eniway did not create are never touched."""
        spec = r.get("spec") or {}
        if spec.get("primary") or not spec.get("managed"):
            return True
        eni = self._describe_one(r["metadata"]["name"])
        if eni is None:
            return True
        if not self.managed(eni) or eni.type == "Primary":
            return True
        if eni.status in (INUSE, ATTACHING) and eni.instance_id:
            log.info("ENI %s: its resource is deleted; detaching it", eni.eni_id)
            try:
                self.cloud.detach_eni(eni.eni_id, eni.instance_id)
            except (InvalidState, NotFound) as e:
                log.info("detach %s: %s (will retry)", eni.eni_id, e)
            return False
        if eni.status == AVAILABLE:
            log.info("ENI %s: its resource is deleted; deleting it", eni.eni_id)
            self._forget_tagged()
            with contextlib.suppress(NotFound):
                self.cloud.delete_eni(eni.eni_id)
            metrics.GC_DELETED.labels("eni").inc()
            return True
        return False

    def _teardown(self, name: str) -> float | None:
        """The Node is gone: free every ENI eniway holds for it, then forget the node."""
        pool = self.kube.get_pool(name)
        resources = [r for r in self.kube.list_enis(name) if not exclusive_resource(r)]
        pending = False
        for r in resources:
            try:
                if self.cleanup_eni(r):
                    self.kube.release_eni(r["metadata"]["name"])
                else:
                    pending = True
            except CloudError as e:
                log.warning("teardown of %s: %s", r["metadata"]["name"], e)
                pending = True
        try:
            leftovers = self.cloud.describe_enis(tags={
                contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                contract.TAG_CLUSTER: self.settings.cluster_id, contract.TAG_NODE: name})
        except CloudError:
            leftovers, pending = [], True
        for left in leftovers:
            if not self.managed(left) or self.exclusive(left):
                continue  # an exclusive ENI follows its pod, not the node
            try:
                if left.status == AVAILABLE:
                    self.cloud.delete_eni(left.eni_id)
                elif left.status in (INUSE, ATTACHING) and left.instance_id:
                    self.cloud.detach_eni(left.eni_id, left.instance_id)
                    pending = True
                else:
                    pending = True
            except CloudError as err:
                log.info("teardown of %s: %s", left.eni_id, err)
                pending = True
        if pending:
            return 1.0
        if pool is not None:
            self.kube.delete_pool(name)
        self.memory.pop(name, None)
        with self._beats_lock:
            self._beats.pop(name, None)
        metrics.forget_pool(name)
        log.info("node %s is gone; its ENIs and pool are released", name)
        return None


def serves_pods(e: NetworkInterface, on_primary: bool) -> bool:
    """Whether an ENI's secondary IPs are pod IPs: a secondary ENI's always, the primary's
    where the cloud's rule puts pods on it (``InstanceLimits.pods_on_primary_eni``)."""
    return e.type != "Primary" or on_primary


def exclusive_resource(r: JSON) -> bool:
    """An ENI resource of an exclusive-mode ENI."""
    return (r.get("spec") or {}).get("mode") == contract.MODE_EXCLUSIVE


def instance_of(node: JSON) -> str:
    """Instance id from spec.providerID: "<region>.<instance>" (Alibaba's format), also
    accepting "alicloud://<region>.<instance>", or EC2's "aws:///<zone>/<instance>"."""
    pid = (node.get("spec") or {}).get("providerID") or ""
    pid = pid.split("://", 1)[-1]
    if "/" in pid:
        pid = pid.rsplit("/", 1)[1]
    elif "." in pid:
        pid = pid.split(".", 1)[1]
    return pid if pid.startswith("i-") and "." not in pid else ""


def _condition_true(pool: JSON, ctype: str) -> bool:
    for c in (pool.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return bool(c.get("status") == "True")
    return False


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ip.split("."))
