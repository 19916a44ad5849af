#!/usr/bin/env python3
"""Trade-off benchmark: pod IP-ready latency against idle IPs, per warm-pool policy.

Replays one churn trace (a burst of pods on cold nodes, a burst on warm ones, a rolling
update, a scale-in, new nodes with pods) against eniway-cloudsim through the official SDK,
with a per-API latency, attach and detach delays drawn from a range, and ECS's default rate
limits. Each node's pool is driven by a policy:

- eniway: the operator's own planner (``eniway_operator.plan.plan_node``) with the given
  pool knobs; released IPs go through the release handshake (the agent's part is played
  here: it acknowledges at once what no pod holds), cooling IPs as the agent keeps them;
- modelled peers, from their documented warm-pool rules, in the same harness: Terway's
  min/max pool, the AWS VPC CNI's WARM_ENI_TARGET and its WARM_IP_TARGET /
  MINIMUM_IP_TARGET mode. They are models, labelled so, not the peers' code.

A pod gets an IP the moment one is free on an attached ENI (the agent's part); its
latency is from its arrival to then (a pod deleted or still waiting at the end without
one counts with what it waited). Idle IPs: assigned to a node's ENIs, held by no pod.

    python3 hack/bench_tradeoff.py [--nodes 3] [--time-scale 1] [--policies a,b]
                                   [--plot out.png] [--table out.md]

Prints the table; passes or fails nothing.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "operator"))

from eniway_cloudsim.testing import start_in_process  # noqa: E402
from eniway_operator.cloud.aliyun import AliyunProvider  # noqa: E402
from eniway_operator.cloud.base import (  # noqa: E402
    MAX_IPS_AT_CREATE,
    CloudError,
    InstanceLimits,
    NetworkInterface,
    Throttled,
    VSwitch,
)
from eniway_operator.cloud.credentials import StaticCredentials  # noqa: E402
from eniway_operator.cloud.ratelimit import DEFAULT_RATES  # noqa: E402
from eniway_operator.config import PoolConfig  # noqa: E402
from eniway_operator.plan import (  # noqa: E402
    ATTACHING,
    AVAILABLE,
    DETACHING,
    INUSE,
    Action,
    AssignIPs,
    AttachENI,
    CreateENI,
    DeleteENI,
    DetachENI,
    ENIView,
    NodeState,
    UnassignIPs,
    plan_node,
    secondary_capacity,
)

ZONE = "cn-hangzhou-i"
INSTANCE_TYPE = "ecs.g6.4xlarge"  # 7 secondary ENIs x 19 pod IPs
# Per-API latency (ms, + up to jitter): ECS answers mutating calls in a few hundred ms.
LATENCY = {"CreateNetworkInterface": (300, 200), "AttachNetworkInterface": (150, 100),
           "DetachNetworkInterface": (150, 100), "DeleteNetworkInterface": (150, 100),
           "AssignPrivateIpAddresses": (200, 150), "UnassignPrivateIpAddresses": (200, 150),
           "DescribeNetworkInterfaces": (80, 60)}
ATTACH_DELAY = (1.0, 3.0)  # seconds, drawn uniformly per attach (and per detach)


# -- what a policy sees and decides --------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One node as a policy sees it."""

    now: float
    limits: InstanceLimits
    vswitch: VSwitch
    enis: tuple[ENIView, ...]
    allocated: frozenset[str]
    pending: int
    release: frozenset[str]
    marked_at: dict[str, float]
    free_since: dict[str, float]
    cooling: frozenset[str]
    warmed_up: bool
    last_idle_reclaim: float
    node: str = ""
    started: float = 0.0  # when the node joined
    pending_before: int = 0  # pods waiting at the node's previous round
    allocated_before: int = 0  # IPs pods held at the node's previous round


@dataclass
class Decision:
    actions: list[Action]
    release: frozenset[str] = frozenset()  # the new release list (eniway's handshake)
    warmed_up: bool = False
    idle_reclaimed: bool = False


@dataclass(frozen=True)
class Policy:
    name: str
    label: str  # "eniway" or "modelled"
    decide: Callable[[Snapshot], Decision]
    cooldown: float  # a pod's freed IP is not handed out again this long...
    cooled_fallback: bool = False  # ...unless nothing else is free (eniway's agent)


def eniway_policy(name: str, **knobs: Any) -> Policy:
    cfg = replace(PoolConfig(), **knobs)

    def decide(s: Snapshot) -> Decision:
        plan = plan_node(NodeState(
            limits=s.limits, config=cfg, now=s.now, zone_id=ZONE, enis=s.enis,
            allocated=s.allocated, free_since=s.free_since, cooling=s.cooling,
            release=s.release, marked_at=s.marked_at,
            acknowledged=s.release - s.allocated,  # the agent's part: at once
            pending=s.pending, pending_before=s.pending_before,
            allocated_before=s.allocated_before, vswitches=(s.vswitch,),
            default_vswitch=s.vswitch.vswitch_id,
            warmed_up=s.warmed_up, last_idle_reclaim=s.last_idle_reclaim))
        return Decision(plan.actions, plan.release, plan.warmed_up, plan.idle_reclaimed)

    return Policy(name, "eniway", decide, cfg.ip_cooldown, cooled_fallback=True)


def _inuse(s: Snapshot) -> list[ENIView]:
    return [e for e in s.enis if not e.primary and e.status == INUSE]


def _free(s: Snapshot) -> list[str]:
    return [ip for e in _inuse(s) for ip in e.ips if ip not in s.allocated]


def _fill(s: Snapshot, need: int, whole: bool) -> list[Action]:
    """Assign ``need`` IPs (10 a call) to ENIs with room, then create ENIs for the rest
    (``whole``: each new ENI filled to its capacity, as the AWS VPC CNI attaches them)."""
    cap = secondary_capacity(s.limits)
    out: list[Action] = []
    live = [e for e in s.enis if not e.primary and e.status in (INUSE, ATTACHING)]
    need -= sum(len(e.ips) for e in live if e.status == ATTACHING)  # filled at creation
    for e in _inuse(s):
        room = min(cap - len(e.ips), need)
        while room > 0:
            n = min(room, 10)
            out.append(AssignIPs(e.eni_id, n))
            room -= n
            need -= n
    slots = s.limits.max_enis - 1 - len(live)
    while need > 0 and slots > 0:
        take = cap if whole else min(need, cap)
        out.append(CreateENI(s.vswitch.vswitch_id, min(take, MAX_IPS_AT_CREATE)))
        need -= take
        slots -= 1
    return out


def _give_back(s: Snapshot, n: int) -> list[Action]:
    """Unassign ``n`` free IPs, from the ENI with the fewest pods first (10 a call)."""
    out: list[Action] = []
    for e in sorted(_inuse(s), key=lambda e: len(set(e.ips) & s.allocated)):
        ips = [ip for ip in e.ips if ip not in s.allocated and ip not in s.cooling][:n]
        for i in range(0, len(ips), 10):
            out.append(UnassignIPs(e.eni_id, tuple(ips[i:i + 10])))
        n -= len(ips)
        if n <= 0:
            break
    return out


def _cleanup(s: Snapshot) -> list[Action]:
    return [DeleteENI(e.eni_id) for e in s.enis if e.status == AVAILABLE and not e.primary]


# Terway's pool manager gives back idle IPs above max_pool_size only on its pool sync, which
# runs when the daemon starts and then every ip_pool_sync_period, at least 2 min, jittered up
# to twice that (pkg/eni/manager.go: NewManager, wait.JitterUntil(syncPool, period, 1.0)).
TERWAY_SYNC = 120.0


def terway_policy(min_pool: int, max_pool: int) -> Policy:
    """Terway (shared-ENI mode): a pod that finds no idle IP has one allocated on demand
    (batches of up to 10 a call); idle IPs above max_pool go back on the pool sync; ENIs are
    kept. Not modelled, in Terway's favour: its 300 ms wait to gather requests, a new ENI
    carrying at most one batch, and its per-ENI call rate limit (pkg/eni/local.go)."""
    next_sync: dict[str, tuple[float, int]] = {}  # node -> (when, how many syncs so far)

    def decide(s: Snapshot) -> Decision:
        free = len(_free(s))
        need = max(min_pool, s.pending) - free
        if need > 0:
            return Decision(_fill(s, need, whole=False))
        due, n = next_sync.setdefault(s.node, (s.started, 0))
        if s.now < due:
            return Decision(_cleanup(s))
        jitter = random.Random(f"{s.node}:{n}").random()  # the same in every run
        next_sync[s.node] = (s.now + TERWAY_SYNC * (1 + jitter), n + 1)
        if free > max_pool:
            return Decision(_give_back(s, free - max_pool) + _cleanup(s))
        return Decision(_cleanup(s))

    return Policy(f"Terway min {min_pool} / max {max_pool}", "modelled", decide, 0.0)


# The AWS VPC CNI's ipamd checks its pool every 5 s (ipPoolMonitorInterval), one step at a
# time: IPs on an ENI with room, else one new ENI, waiting for it to attach; it gives IPs
# back at most every 30 s (decreaseIPPoolInterval) and frees one ENI a check
# (pkg/ipamd/ipamd.go: StartNodeIPPoolManager, updateIPPoolIfRequired).
AWS_CHECK, AWS_DECREASE = 5.0, 30.0


def _aws_tick(checked: dict[str, float], s: Snapshot) -> bool:
    """Whether ipamd's pool check runs now (never while an ENI it created is attaching)."""
    if any(e.status == ATTACHING for e in s.enis) or \
            s.now < checked.setdefault(s.node, s.started):
        return False
    checked[s.node] = s.now + AWS_CHECK
    return True


def _one_step(actions: list[Action]) -> list[Action]:
    """ipamd's increase: the assigns on one ENI, or one new ENI."""
    first = actions[:1]
    if first and isinstance(first[0], AssignIPs):
        return [a for a in actions if isinstance(a, AssignIPs) and a.eni_id == first[0].eni_id]
    return first


def aws_eni_policy(warm_eni: int = 1) -> Policy:
    """AWS VPC CNI, WARM_ENI_TARGET: every ENI attached with all its IPs; another ENI is
    attached while fewer than warm_eni ENIs' worth of IPs are free (IPs cooling after a pod
    count as free, as ipamd counts them), and an ENI without pods goes when more than that
    (and one ENI more) is free."""
    checked: dict[str, float] = {}

    def decide(s: Snapshot) -> Decision:
        if not _aws_tick(checked, s):
            return Decision([])
        cap = secondary_capacity(s.limits)
        free = len(_free(s))
        if free < warm_eni * cap:  # ipamd sees no pending pods, only its free IPs
            return Decision(_one_step(_fill(s, warm_eni * cap - free, whole=True)))
        if free - cap >= warm_eni * cap:
            empty = [e for e in _inuse(s) if not set(e.ips) & s.allocated]
            if empty:
                return Decision([DetachENI(empty[0].eni_id), *_cleanup(s)])
        return Decision(_cleanup(s))

    return Policy(f"AWS WARM_ENI_TARGET={warm_eni}", "modelled", decide, 30.0)


def aws_ip_policy(warm_ip: int, minimum_ip: int) -> Policy:
    """AWS VPC CNI, WARM_IP_TARGET / MINIMUM_IP_TARGET: at least warm_ip free and
    minimum_ip in all (cooling IPs count as free); free IPs beyond warm_ip (above the
    minimum) are released, cooling ones excepted."""
    checked: dict[str, float] = {}
    decreased: dict[str, float] = {}

    def decide(s: Snapshot) -> Decision:
        if not _aws_tick(checked, s):
            return Decision([])
        free = len(_free(s))
        total = sum(len(e.ips) for e in _inuse(s))
        need = max(warm_ip - free, minimum_ip - total)
        if need > 0:
            return Decision(_one_step(_fill(s, need, whole=False)))
        excess = min(free - warm_ip, total - minimum_ip)
        if excess > 0 and s.now >= decreased.get(s.node, 0.0):
            decreased[s.node] = s.now + AWS_DECREASE
            return Decision(_give_back(s, excess) + _cleanup(s))
        return Decision(_cleanup(s))

    return Policy(f"AWS WARM_IP_TARGET={warm_ip} MINIMUM_IP_TARGET={minimum_ip}", "modelled",
                  decide, 30.0)


DEFAULT = "eniway defaults"
POLICIES: dict[str, Policy] = {p.name: p for p in (
    eniway_policy(DEFAULT),
    eniway_policy("eniway min 5 / max 10", min_pool_size=5, max_pool_size=10),
    eniway_policy("eniway ip_cooldown 0", ip_cooldown=0.0),
    eniway_policy("eniway max 0", max_pool_size=0),
    terway_policy(0, 5),
    aws_eni_policy(1),
    aws_ip_policy(5, 10),
)}


# -- one node: its pods (the agent's part) and its pool (the policy's) -------------------
@dataclass
class Node:
    name: str
    instance_id: str
    limits: InstanceLimits
    view: dict[str, NetworkInterface] = field(default_factory=dict)
    pods: dict[str, str] = field(default_factory=dict)  # pod -> IP
    waiting: dict[str, float] = field(default_factory=dict)  # pod -> arrived at
    release: frozenset[str] = frozenset()
    marked_at: dict[str, float] = field(default_factory=dict)
    freed_at: dict[str, float] = field(default_factory=dict)
    free_since: dict[str, float] = field(default_factory=dict)
    warmed_up: bool = False
    last_idle_reclaim: float = 0.0
    started: float = 0.0
    pending_before: int = 0
    allocated_before: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)


class Run:
    """One policy over the trace."""

    def __init__(self, policy: Policy, provider: AliyunProvider, vswitch: VSwitch,
                 sg: str, new_instance: Callable[[], str]) -> None:
        self.policy, self.cloud, self.vswitch, self.sg = policy, provider, vswitch, sg
        self.new_instance = new_instance
        self.limits = provider.instance_limits(INSTANCE_TYPE)
        self.nodes: dict[str, Node] = {}
        self.latency: list[float] = []
        self.idle_samples: dict[str, list[int]] = {}
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # nodes
    def add_node(self) -> Node:
        inst = self.new_instance()
        view = {e.eni_id: e for e in self.cloud.describe_enis(instance_id=inst)}
        node = Node(f"n{len(self.nodes)}", inst, self.limits, view, started=self.now())
        self.nodes[node.name] = node
        self.idle_samples[node.name] = []
        t = threading.Thread(target=self._drive, args=(node,), daemon=True)
        t.start()
        self.threads.append(t)
        return node

    # pods (the agent's part)
    def _usable(self, node: Node, now: float) -> list[str]:
        """Free IPs in the order they are handed out: rested ones (lowest first), then,
        where the agent does so, cooling ones (longest cooled first)."""
        held = set(node.pods.values())
        free = [ip for e in node.view.values() if e.type != "Primary" and e.status == INUSE
                for ip in e.private_ips if ip not in held and ip not in node.release]
        rested = sorted(ip for ip in free
                        if now - node.freed_at.get(ip, -1e9) >= self.policy.cooldown)
        if not self.policy.cooled_fallback:
            return rested
        return rested + sorted(set(free) - set(rested), key=lambda ip: node.freed_at[ip])

    def _serve(self, node: Node) -> None:
        """Hand free IPs to waiting pods (under the node's lock)."""
        if not node.waiting:
            return
        now = self.now()
        free = self._usable(node, now)
        for pod in sorted(node.waiting, key=node.waiting.__getitem__):
            if not free:
                break
            ip = free.pop(0)
            node.pods[pod] = ip
            node.free_since.pop(ip, None)
            self.latency.append(now - node.waiting.pop(pod))

    def add_pod(self, node: Node, pod: str) -> None:
        with node.lock:
            node.waiting[pod] = self.now()
            self._serve(node)
        node.wake.set()

    def delete_pod(self, node: Node, pod: str) -> None:
        with node.lock:
            if pod in node.waiting:  # it never had an IP: it counts with what it waited
                self.latency.append(self.now() - node.waiting.pop(pod))
            ip = node.pods.pop(pod, None)
            if ip is not None:
                node.freed_at[ip] = node.free_since[ip] = self.now()
        node.wake.set()

    # the pool (the policy's part)
    def _snapshot(self, node: Node) -> Snapshot:
        now = self.now()
        held = frozenset(node.pods.values())
        views = tuple(ENIView(
            e.eni_id, e.status, e.vswitch_id, () if e.type == "Primary" else e.private_ips,
            primary=e.type == "Primary") for e in node.view.values())
        cooling = frozenset(ip for ip, t in node.freed_at.items()
                            if now - t < self.policy.cooldown)
        return Snapshot(now, node.limits, self.vswitch, views, held, len(node.waiting),
                        node.release, dict(node.marked_at), dict(node.free_since), cooling,
                        node.warmed_up, node.last_idle_reclaim, node.name, node.started,
                        node.pending_before, node.allocated_before)

    def _drive(self, node: Node) -> None:
        try:
            self._drive_loop(node)
        except Exception as e:  # reported with the figures, never hidden
            self.errors.append(f"{node.name}: {e!r}")
            raise

    def _drive_loop(self, node: Node) -> None:
        while not self.stop.is_set():
            with node.lock:
                self._serve(node)  # an IP whose cooldown ended serves a waiting pod
                snap = self._snapshot(node)
                d = self.policy.decide(snap)
                node.marked_at = {ip: node.marked_at.get(ip, snap.now) for ip in d.release}
                node.release = d.release
                node.warmed_up = d.warmed_up
                node.pending_before = snap.pending
                node.allocated_before = len(snap.allocated)
                if d.idle_reclaimed:
                    node.last_idle_reclaim = snap.now
            for a in d.actions:
                try:
                    self._do(node, a)
                except Throttled:
                    break
                except CloudError as e:
                    self.errors.append(f"{node.name} {a}: {e}")
                    break
            moving = [i for i, e in node.view.items() if e.status in (ATTACHING, DETACHING)]
            if moving:
                try:
                    found = {e.eni_id: e for e in self.cloud.describe_enis(eni_ids=moving)}
                except CloudError:
                    found = {}
                with node.lock:
                    for i in moving:
                        if i in found:
                            node.view[i] = found[i]
                    self._serve(node)
            node.wake.wait(0.2 if (moving or d.actions) else 0.5)
            node.wake.clear()

    def _do(self, node: Node, a: Action) -> None:
        token = f"bench-{uuid.uuid4().hex[:20]}"
        if isinstance(a, CreateENI):
            e = self.cloud.create_eni(a.vswitch_id, [self.sg], {"bench": node.name},
                                      secondary_ip_count=a.ip_count, client_token=token)
            with node.lock:
                node.view[e.eni_id] = e
            self.cloud.attach_eni(e.eni_id, node.instance_id)
            with node.lock:
                node.view[e.eni_id] = replace(e, status=ATTACHING)
        elif isinstance(a, AttachENI):
            self.cloud.attach_eni(a.eni_id, node.instance_id)
            with node.lock:
                node.view[a.eni_id] = replace(node.view[a.eni_id], status=ATTACHING)
        elif isinstance(a, AssignIPs):
            got = self.cloud.assign_ips(a.eni_id, a.count, client_token=token)
            with node.lock:
                e = node.view[a.eni_id]
                node.view[a.eni_id] = replace(e, private_ips=(*e.private_ips, *got))
                now = self.now()
                for ip in got:
                    node.free_since[ip] = now
                self._serve(node)
        elif isinstance(a, UnassignIPs):
            with node.lock:  # the agent's check at the moment of acting
                ips = [ip for ip in a.ips if ip not in set(node.pods.values())]
            if not ips:
                return
            self.cloud.unassign_ips(a.eni_id, ips)
            with node.lock:
                e = node.view[a.eni_id]
                node.view[a.eni_id] = replace(e, private_ips=tuple(
                    ip for ip in e.private_ips if ip not in ips))
                node.release = node.release - set(ips)
        elif isinstance(a, DetachENI):
            with node.lock:
                if set(node.view[a.eni_id].private_ips) & set(node.pods.values()):
                    return
            self.cloud.detach_eni(a.eni_id, node.instance_id)
            with node.lock:
                node.view[a.eni_id] = replace(node.view[a.eni_id], status=DETACHING)
                node.release = node.release - set(node.view[a.eni_id].private_ips)
        elif isinstance(a, DeleteENI):
            self.cloud.delete_eni(a.eni_id)
            with node.lock:
                node.view.pop(a.eni_id, None)

    def sample(self, every: float) -> None:
        while not self.stop.wait(every):
            for node in list(self.nodes.values()):
                with node.lock:
                    held = set(node.pods.values())
                    idle = sum(1 for e in node.view.values() if e.type != "Primary"
                               and e.status in (INUSE, DETACHING)
                               for ip in e.private_ips if ip not in held)
                self.idle_samples[node.name].append(idle)


def trace(run: Run, nodes: int, scale: float, burst: int) -> None:
    """The churn: cold burst, warm burst, rolling update, scale-in, scale-out."""
    def at(t: float) -> None:
        time.sleep(max(0.0, run.t0 + t * scale - time.monotonic()))

    first = [run.add_node() for _ in range(nodes)]
    seq = 0
    live: list[tuple[Node, str]] = []

    def create(node: Node) -> None:
        nonlocal seq
        seq += 1
        run.add_pod(node, f"p{seq}")
        live.append((node, f"p{seq}"))

    at(2)
    for node in first:  # a burst on cold nodes
        for _ in range(burst):
            create(node)
    at(25)
    for node in first:  # a burst on the same, now warm, nodes
        for _ in range(burst // 2):
            create(node)
    at(50)
    old = list(live)  # rolling update: one new pod, then one old pod gone, 4 a second
    for node, pod in old:
        create(node)
        time.sleep(0.25 * scale)
        run.delete_pod(node, pod)
        live.remove((node, pod))
    at(50 + 0.25 * len(old) + 20)
    for node, pod in live[::2]:  # scale-in: half the pods go
        run.delete_pod(node, pod)
    t_out = 50 + 0.25 * len(old) + 40
    at(t_out)
    for _ in range(max(1, nodes // 2)):  # scale-out: a new node with a burst
        node = run.add_node()
        for _ in range(burst):
            create(node)
    at(t_out + 30)


def pct(xs: Sequence[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def run_policy(policy: Policy, nodes: int, scale: float, burst: int) -> dict[str, Any]:
    sim = start_in_process(attach_delay=ATTACH_DELAY[0], detach_delay=ATTACH_DELAY[0],
                           eni_quota=20 * nodes + 50, seed=7)
    try:
        sim.admin.set_settings(delay_spread=ATTACH_DELAY[1] / ATTACH_DELAY[0])
        for api_name, rate in DEFAULT_RATES.items():
            sim.admin.set_throttle(api_name, rate.per_second, burst=rate.burst)
        sim.admin.set_faults({api: {"latency_ms": ms, "jitter_ms": jit}
                              for api, (ms, jit) in LATENCY.items()}, seed=7)
        topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/16"]})
        provider = AliyunProvider(region_id=sim.region, endpoint=sim.endpoint, protocol="http",
                                  credentials=StaticCredentials(sim.access_key_id,
                                                                sim.access_key_secret))
        vsw = provider.describe_vswitches(topo.vswitch_ids(ZONE))[0]

        def new_instance() -> str:
            return str(sim.admin.create_instance(INSTANCE_TYPE, vsw.vswitch_id,
                                                 [topo.security_group_id])["instance_id"])

        run = Run(policy, provider, vsw, topo.security_group_id, new_instance)
        sampler = threading.Thread(target=run.sample, args=(0.25,), daemon=True)
        sampler.start()
        sim.admin.reset_call_counts()
        trace(run, nodes, scale, burst)
        run.stop.set()
        for t in [*run.threads, sampler]:
            t.join(30)
        end = run.now()  # a pod still waiting counts with what it waited so far
        waiting = [end - t for n in run.nodes.values() for t in n.waiting.values()]
        run.latency += waiting
        counts = sim.admin.call_counts()
        idle_all = [x for xs in run.idle_samples.values() for x in xs]
        return {
            "policy": policy.name, "label": policy.label, "pods": len(run.latency),
            "never_served": len(waiting),
            "p50_s": statistics.median(run.latency) if run.latency else float("nan"),
            "p99_s": pct(run.latency, 99),
            "idle_avg": statistics.fmean(idle_all) if idle_all else 0.0,
            "idle_peak": max(idle_all, default=0),
            "calls": int(counts["total"]),
            "by_api": {k.replace("NetworkInterface", "ENI").replace("PrivateIpAddresses", "IPs"):
                       int(v) for k, v in sorted(counts["calls"].items())},
            "throttled": sum(int(v.get("Throttling", 0))
                             for v in counts.get("errors", {}).values()),
            "errors": run.errors[:3],
        }
    finally:
        sim.close()


def dominates(o: dict[str, Any], r: dict[str, Any]) -> bool:
    """``o`` is at least as good as ``r`` on idle IPs (average) and p99, better on one."""
    return (o["idle_avg"] <= r["idle_avg"] and o["p99_s"] <= r["p99_s"]
            and (o["idle_avg"] < r["idle_avg"] or o["p99_s"] < r["p99_s"]))


def frontier(rows: list[dict[str, Any]]) -> set[str]:
    """Policies no other one beats on both idle IPs (average) and p99 latency."""
    return {r["policy"] for r in rows if not any(dominates(o, r) for o in rows if o is not r)}


def verdict(rows: list[dict[str, Any]], name: str = DEFAULT, peers_only: bool = False) -> str:
    """Whether ``name`` is on the frontier (of every policy run, or of it and the modelled
    peers only), which policies beat it and which it beats."""
    me = next((r for r in rows if r["policy"] == name), None)
    if me is None:
        return f"{name}: not run"
    others = [o for o in rows if o is not me and (o["label"] == "modelled" or not peers_only)]
    beaten_by = [o["policy"] for o in others if dominates(o, me)]
    beats = [o["policy"] for o in others if dominates(me, o)]
    scope = "against the modelled peers" if peers_only else "against every policy run"
    if beaten_by:
        return f"{name} {scope}: NOT on the frontier; beaten by {', '.join(beaten_by)}"
    return (f"{name} {scope}: on the frontier; beats "
            + (", ".join(beats) if beats else "none") + f" ({len(beats)} of {len(others)})")


def verdicts(rows: list[dict[str, Any]]) -> str:
    return "\n".join(verdict(rows, peers_only=p) for p in (True, False))


def table(rows: list[dict[str, Any]], front: set[str]) -> str:
    lines = ["| policy | | pods | p50 s | p99 s | idle IPs/node avg | peak | cloud calls "
             "| throttled | on the frontier |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['label']} | {r['pods']} | {r['p50_s']:.2f} | "
                     f"{r['p99_s']:.2f} | {r['idle_avg']:.1f} | {r['idle_peak']} | "
                     f"{r['calls']} | {r['throttled']} | "
                     f"{'yes' if r['policy'] in front else ''} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], front: set[str], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Policies often land close together: each point carries a number, and the legend
    # names it with its figures, so no label hides another. p99 on a log scale keeps the
    # close ones apart and the slow ones on the page.
    fig, ax = plt.subplots(figsize=(9, 6))
    for i, r in enumerate(rows, 1):
        own = r["label"] == "eniway"
        ax.scatter(r["idle_avg"], r["p99_s"], marker="o" if own else "s",
                   color="tab:blue" if own else "tab:gray", s=60,
                   label=f"{i}: {r['policy']}{'' if own else ' (modelled)'}: "
                         f"p99 {r['p99_s']:.2f} s, {r['idle_avg']:.1f} idle")
        ax.annotate(str(i), (r["idle_avg"], r["p99_s"]), textcoords="offset points",
                    xytext=(5, 5 + 9 * (i % 2)), fontsize=9)
    pts = sorted((r["idle_avg"], r["p99_s"]) for r in rows if r["policy"] in front)
    if len(pts) > 1:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="tab:green", lw=1,
                label="frontier")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("idle IPs per node (average)")
    ax.set_ylabel("pod IP-ready latency p99 (s, log scale)")
    ax.set_title("Warm-pool policies: latency against idle IPs (same trace, same cloud)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--burst", type=int, default=30, help="pods per node in a cold burst")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="stretch (>1) or shrink (<1) the trace (the cloud keeps its pace)")
    ap.add_argument("--policies", default="", help="comma-separated names (default: all)")
    ap.add_argument("--plot", default="", help="write the plot (PNG) here")
    ap.add_argument("--table", default="", help="write the table (markdown) here")
    args = ap.parse_args()
    chosen = [POLICIES[n.strip()] for n in args.policies.split(",") if n.strip()] \
        if args.policies else list(POLICIES.values())
    rows = []
    for policy in chosen:
        r = run_policy(policy, args.nodes, args.time_scale, args.burst)
        rows.append(r)
        print(f"{r['policy']} ({r['label']}): {r['pods']} pods, p50 {r['p50_s']:.2f} s, "
              f"p99 {r['p99_s']:.2f} s, idle IPs/node avg {r['idle_avg']:.1f} peak "
              f"{r['idle_peak']}, {r['calls']} cloud calls, {r['throttled']} throttled, "
              f"{r['never_served']} never served; {r['by_api']}", flush=True)
        for err in r["errors"]:
            print(f"  cloud error: {err}")
    front = frontier(rows)
    text = table(rows, front)
    print()
    print(text)
    print()
    print(verdicts(rows))
    if args.table:
        Path(args.table).write_text(text + "\n\n" + verdicts(rows) + "\n")
    if args.plot:
        plot(rows, front, Path(args.plot))
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
