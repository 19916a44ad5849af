"""Pool planning: a pure function from one node's state to the actions that move it
towards its configured pool.

No I/O and no clock reads: the caller passes ``now``. The reconciler turns cloud and
Kubernetes state into a ``NodeState``, calls ``plan_node`` and hands the ``Plan`` to the
executor. Every rule the operator follows about limits (docs/architecture.md, invariant 4), the
release handshake (invariant 2) and batching (invariant 5) is decided here, so it is tested
with tables of cases and no cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from eniway_operator.cloud.base import InstanceLimits, VSwitch
from eniway_operator.config import PoolConfig

# Cloud-side ENI states the planner distinguishes (ECS names).
AVAILABLE = "Available"
ATTACHING = "Attaching"
INUSE = "InUse"
DETACHING = "Detaching"

# Condition types on ENIPool
COND_LIMIT = "LimitReached"
COND_HOTSWAP = "HotSwapUnsupported"
COND_VSW = "VSwitchExhausted"
COND_QUOTA = "QuotaExceeded"
COND_THROTTLED = "Throttled"
COND_CLOUD = "CloudError"
COND_CONFIG = "ConfigInvalid"
COND_WARM = "WarmedUp"
COND_SKEW = "VersionSkew"
COND_AGENT = "AgentUnresponsive"
COND_READY = "Ready"

# Acknowledged IPs of an ENI wait this long for more to fill a batch before unassigning.
RELEASE_BATCH_WAIT = 5.0
WHOLE_ENI_WAIT = 6  # batch waits an ENI about to go whole waits for its last acknowledgements


@dataclass(frozen=True)
class ENIView:
    """One ENI of the node as the planner sees it."""

    eni_id: str
    status: str  # Available, Attaching, InUse, Detaching
    vswitch_id: str
    ips: tuple[str, ...] = ()  # secondary IPs (primary IP excluded)
    primary: bool = False
    managed: bool = True  # tagged as eniway's
    empty_since: float | None = None
    deleting: bool = False  # its ENI resource is being deleted: hands off


@dataclass(frozen=True)
class NodeState:
    limits: InstanceLimits
    config: PoolConfig
    now: float
    zone_id: str = ""
    instance_running: bool = True
    enis: tuple[ENIView, ...] = ()
    allocated: frozenset[str] = frozenset()  # IPs held by pods (PodIPs and agent)
    free_since: Mapping[str, float] = field(default_factory=dict)  # IP -> became free at
    cooling: frozenset[str] = frozenset()  # IPs a pod gave back less than ip_cooldown ago
    release: frozenset[str] = frozenset()  # ENIPool spec.release.ips
    marked_at: Mapping[str, float] = field(default_factory=dict)  # IP -> listed since
    acknowledged: frozenset[str] = frozenset()  # ENIPool status.agent.acknowledged
    pending: int = 0  # pods on the node waiting for an IP
    pending_before: int = 0  # pending at the node's previous round (0 after a restart)
    allocated_before: int = 0  # IPs held by pods at the node's previous round
    vswitches: tuple[VSwitch, ...] = ()  # described candidates (config'd ones for the zone)
    default_vswitch: str = ""  # the instance's own vSwitch, used when none is configured
    blocked_vswitches: Mapping[str, float] = field(default_factory=dict)  # id -> until
    warmed_up: bool = False
    last_idle_reclaim: float = 0.0
    reserved_slots: int = 0  # secondary-ENI slots kept for exclusive-ENI pods (exclusive_plan)


@dataclass(frozen=True)
class CreateENI:
    vswitch_id: str
    ip_count: int  # secondary IPs requested at creation (<= limits.ips_at_create)


@dataclass(frozen=True)
class AttachENI:
    eni_id: str


@dataclass(frozen=True)
class AssignIPs:
    eni_id: str
    count: int


@dataclass(frozen=True)
class UnassignIPs:
    eni_id: str
    ips: tuple[str, ...]


@dataclass(frozen=True)
class DetachENI:
    eni_id: str


@dataclass(frozen=True)
class DeleteENI:
    eni_id: str


Action = CreateENI | AttachENI | AssignIPs | UnassignIPs | DetachENI | DeleteENI


@dataclass(frozen=True)
class Condition:
    status: bool
    reason: str
    message: str


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    release: frozenset[str] = frozenset()  # the new spec.release.ips
    conditions: dict[str, Condition] = field(default_factory=dict)
    warmed_up: bool = False
    idle_reclaimed: bool = False  # the caller records now as last_idle_reclaim
    counts: dict[str, int] = field(default_factory=dict)
    want_free: int = 0

    def cloud_calls(self) -> int:
        return len(self.actions)


def secondary_capacity(limits: InstanceLimits) -> int:
    """Secondary IPs one ENI can hold (its primary IP is the ENI's own)."""
    return max(limits.ips_per_eni - 1, 0)


def max_secondary_enis(limits: InstanceLimits, cfg: PoolConfig, reserved: int = 0) -> int:
    """ENIs the shared pool may attach besides the primary one, leaving ``reserved``
    device slots to exclusive-ENI pods."""
    n = max(limits.max_enis - 1 - reserved, 0)
    return min(n, cfg.max_eni) if cfg.max_eni else n


def ips_per_call(limits: InstanceLimits, cfg: PoolConfig) -> int:
    """IPs one assign/unassign call carries: the pool's setting, capped by the cloud's; with
    no setting (0), the cloud's (10 on ECS; on EC2 an ENI's room, so one call fills it)."""
    if cfg.ips_per_call <= 0:
        return max(limits.ips_per_call, 1)
    return max(min(cfg.ips_per_call, limits.ips_per_call), 1)


def pod_enis(state: NodeState) -> tuple[list[ENIView], ENIView | None]:
    """The node's secondary ENIs (not being deleted) and, where the cloud's rule has the
    primary ENI's secondary IPs serve pods (EC2), the primary ENI in use."""
    live = [e for e in state.enis if not e.primary and not e.deleting]
    primary = None
    if state.limits.pods_on_primary_eni:
        primary = next((e for e in state.enis
                        if e.primary and e.status == INUSE and not e.deleting), None)
    return live, primary


def chunks(n: int, size: int) -> list[int]:
    """n split into batches of at most size (``ips_per_call``)."""
    out = []
    while n > 0:
        out.append(min(n, size))
        n -= size
    return out


def pick_vswitch(state: NodeState, need: int) -> tuple[str | None, str]:
    """The vSwitch for a new ENI, and why none when None. Most free IPs first (or the
    configured order), skipping the block list and vSwitches in another zone or empty."""
    cfg = state.config
    configured = cfg.vswitches_for(state.zone_id)
    if not configured:
        if state.default_vswitch and state.default_vswitch not in _blocked(state):
            return state.default_vswitch, ""
        return None, "no vSwitch configured for zone and the instance's own one is blocked"
    described = {v.vswitch_id: v for v in state.vswitches}
    candidates = []
    for order, vsw_id in enumerate(configured):
        if vsw_id in _blocked(state):
            continue
        v = described.get(vsw_id)
        if v is None:
            continue
        if state.zone_id and v.zone_id and v.zone_id != state.zone_id:
            continue
        if v.available_ips <= 0:
            continue
        candidates.append((order, v))
    if not candidates:
        return None, f"every vSwitch of zone {state.zone_id} is exhausted or blocked"
    if cfg.vswitch_selection_policy == "ordered":
        return candidates[0][1].vswitch_id, ""
    enough = [c for c in candidates if c[1].available_ips >= need] or candidates
    best = max(enough, key=lambda c: (c[1].available_ips, -c[0]))
    return best[1].vswitch_id, ""


def _blocked(state: NodeState) -> set[str]:
    return {v for v, until in state.blocked_vswitches.items() if until > state.now}


def plan_node(state: NodeState) -> Plan:
    """Decide what to do now. Idempotent: the same state yields the same plan."""
    cfg, limits, now = state.config, state.limits, state.now
    plan = Plan()
    cap = secondary_capacity(limits)
    per_call = ips_per_call(limits, cfg)
    max_sec = max_secondary_enis(limits, cfg, state.reserved_slots)
    can_attach = limits.hot_swap or not state.instance_running
    blocked = _blocked(state)

    live, primary = pod_enis(state)
    sec_inuse = [e for e in live if e.status == INUSE]
    # The ENIs whose secondary IPs serve pods. The primary (when it serves them) comes
    # first: it never leaves, so IPs taken there leave the secondary ENIs free to empty.
    inuse = [primary, *sec_inuse] if primary else sec_inuse
    attaching = [e for e in live if e.status == ATTACHING]
    available = [e for e in live if e.status == AVAILABLE and e.managed]
    # Device slots: everything on the instance counts, Detaching too, until it is gone.
    slots_used = len([e for e in live if e.status in (ATTACHING, INUSE, DETACHING)])
    attachable = available[:max(max_sec - slots_used, 0)] if can_attach else []

    ip_eni = {ip: e.eni_id for e in inuse for ip in e.ips}
    all_ips = set(ip_eni)
    allocated = state.allocated & frozenset(all_ips)
    # Release handshake: entries gone from the ENIs or held by a pod are dropped.
    release = set(state.release & all_ips) - allocated
    free = all_ips - allocated - release
    cooling = free & state.cooling
    warm = free - cooling

    pending = state.pending if cfg.surge_pending else 0
    want_free = max(cfg.min_pool_size, pending)
    if not state.warmed_up:
        want_free = max(want_free, cfg.warm_up_size - len(allocated))
    plan.want_free = want_free

    max_total = (max_sec + (1 if limits.pods_on_primary_eni else 0)) * cap
    # An ENI still attaching is filled once it is InUse: count its room as coming.
    headroom = max(max_total - len(all_ips) - sum(len(e.ips) for e in attaching), 0)
    deficit = want_free - len(warm) - cap * len(attaching)
    # Pods are arriving. A burst (no pod waiting at the last round) gets its IPs, no more:
    # a whole batch or a whole ENI ahead would be free in the same call, but what the pods
    # leave over stays idle (up to max_pool_size) or costs an unassign call after it.
    surge = pending > 0
    # Pods waited at the last round and more have come since: they keep arriving, and
    # asking for each round's newcomers would cost a call a round. Each call then carries a
    # whole batch, and a new ENI its whole room (the round already counts an attaching
    # ENI's whole room as coming: filled short, it costs an assign call once InUse).
    # "More have come" counts the pods served since as well: pods served as fast as they
    # come leave the count of waiting ones flat while the stream goes on.
    before = state.pending_before if cfg.surge_pending else 0
    arriving = before > 0 and pending > 0 and (
        pending + len(state.allocated) > before + state.allocated_before)

    # 1. Take back IPs marked for release before asking the cloud for new ones.
    if deficit > 0 and release:
        back = sorted(release, key=_ip_key)[:deficit]
        release -= set(back)
        deficit -= len(back)

    # 2. Fill ENIs that have room: the primary first when it serves pods, then the
    #    fullest first, so ENIs drain and fill predictably.
    if deficit > 0:
        order = sorted(sec_inuse, key=lambda e: (-len(e.ips), e.eni_id))
        for e in [primary, *order] if primary else order:
            if deficit <= 0 or headroom <= 0:
                break
            if not (e.managed or e is primary) or e.vswitch_id in blocked:
                continue
            want = math.ceil(deficit / per_call) * per_call if arriving else deficit
            room = min(cap - len(e.ips), headroom, want)
            for n in chunks(room, per_call):
                plan.actions.append(AssignIPs(e.eni_id, n))
            deficit -= max(room, 0)
            headroom -= max(room, 0)

    # 3. Attach what is ready, create what is missing.
    want_enis = max(math.ceil(deficit / cap) if cap and deficit > 0 else 0,
                    cfg.min_eni - len(sec_inuse) - len(attaching))
    attach = attachable[:want_enis]
    for e in attach:
        plan.actions.append(AttachENI(e.eni_id))
    slots_used += len(attach)
    deficit -= cap * len(attach)
    want_enis -= len(attach)
    if want_enis > 0:
        n_create = min(want_enis, max(max_sec - slots_used, 0))
        if not can_attach:
            plan.conditions[COND_HOTSWAP] = Condition(
                True, "HotSwapUnsupported",
                f"{limits.instance_type} cannot attach ENIs while running; "
                "stop the instance to let eniway attach them")
            n_create = 0
        elif n_create > 0:
            vsw, why = pick_vswitch(state, min(deficit, cap))
            if vsw is None:
                plan.conditions[COND_VSW] = Condition(True, "VSwitchExhausted", why)
            else:
                for _ in range(n_create):
                    # The cloud fills a new ENI with up to ips_at_create IPs (49 on ECS) in
                    # the creating call itself.
                    take = min(cap if arriving else max(deficit, 0), cap,
                               limits.ips_at_create)
                    plan.actions.append(CreateENI(vsw, take))
                    deficit -= cap
                    slots_used += 1
        if deficit > 0 and can_attach and slots_used >= max_sec:
            enis = f"the primary and {max_sec}" if limits.pods_on_primary_eni else f"{max_sec}"
            plan.conditions[COND_LIMIT] = Condition(
                True, "ENILimit",
                f"{limits.instance_type} holds at most {enis} secondary ENIs x {cap} IPs "
                f"({max_total} pod IPs); {want_free} free IPs wanted")
    elif deficit > 0 and headroom <= 0:
        plan.conditions[COND_LIMIT] = Condition(
            True, "IPLimit", f"all {max_total} pod IPs of {limits.instance_type} are assigned")

    # 4. Give back what is above the pool's ceiling (mark only: the agent must acknowledge).
    marked_now: set[str] = set()
    if deficit <= 0:
        ceiling = max(cfg.max_pool_size, want_free)
        if surge:  # while pods arrive, a batch beyond them is not given back: more may come
            ceiling = max(ceiling, want_free + per_call)
        unmarked = warm - release
        excess = len(unmarked) - ceiling
        if excess > 0:
            marked_now |= set(_release_order(unmarked, inuse, allocated, state)[:excess])
        if cfg.idle_ip_reclaim_after > 0 and (
                now - state.last_idle_reclaim >= cfg.idle_ip_reclaim_interval):
            rest = unmarked - marked_now
            floor = max(cfg.min_pool_size, want_free)
            idle = [ip for ip in _release_order(rest, inuse, allocated, state)
                    if now - state.free_since.get(ip, now) >= cfg.idle_ip_reclaim_after]
            n = min(cfg.idle_ip_reclaim_batch_size, len(rest) - floor, len(idle))
            if n > 0:
                marked_now |= set(idle[:n])
                plan.idle_reclaimed = True
    release_before = set(release)
    release |= marked_now

    # 5. Unassign what the agent acknowledged and no pod holds (both checked now). An ENI
    #    whose IPs are all acknowledged goes whole: detaching it (then deleting it) gives
    #    every IP back in two calls, however many it holds, and frees its device slot.
    #    The primary ENI never goes: its IPs are unassigned like any.
    done = sorted((release_before & state.acknowledged) - state.allocated, key=_ip_key)
    by_eni: dict[str, list[str]] = {}
    for ip in done:
        by_eni.setdefault(ip_eni[ip], []).append(ip)
    n_sec = len([e for e in live if e.status in (ATTACHING, INUSE)])
    whole: set[str] = set()
    going: set[str] = set()
    if deficit <= 0 and can_attach:
        for e in sorted(sec_inuse, key=lambda e: e.eni_id):
            if n_sec <= cfg.min_eni or not e.managed or not e.ips:
                continue
            if len(by_eni.get(e.eni_id, ())) == len(e.ips):
                plan.actions.append(DetachENI(e.eni_id))
                whole.add(e.eni_id)
                n_sec -= 1
            elif set(e.ips) <= release:
                # All listed (so no pod holds one), some not acknowledged yet: it goes whole
                # once they are, and unassigning the others first would cost calls for
                # nothing. It waits for them a while (an agent that never acknowledges one
                # does not keep the rest forever).
                going.add(e.eni_id)
    for eni_id, ips in sorted(by_eni.items()):
        if eni_id in whole:
            continue
        oldest = min(state.marked_at.get(ip, 0.0) for ip in ips)
        if now - oldest < RELEASE_BATCH_WAIT * (WHOLE_ENI_WAIT if eni_id in going else 1):
            # More may come: one call for them all, or the ENI whole in two calls however
            # many IPs it holds (pods leave in waves: an ENI unassigned ten at a time now
            # is often one that empties a moment later).
            continue
        for i in range(0, len(ips), per_call):
            plan.actions.append(UnassignIPs(eni_id, tuple(ips[i:i + per_call])))
    # Unassigned IPs stay listed until the executor has actually unassigned them.

    # 6. Detach ENIs that stayed empty, delete detached ones nobody needs.
    if deficit <= 0 and can_attach:
        for e in sorted(sec_inuse, key=lambda e: e.eni_id):
            if n_sec <= cfg.min_eni:
                break
            if (e.managed and not e.ips and e.empty_since is not None
                    and now - e.empty_since >= cfg.empty_eni_reclaim_after):
                plan.actions.append(DetachENI(e.eni_id))
                n_sec -= 1
    if deficit <= 0:
        for e in available:
            if e not in attach:
                plan.actions.append(DeleteENI(e.eni_id))

    plan.release = frozenset(release)
    plan.warmed_up = state.warmed_up or (
        cfg.warm_up_size <= len(all_ips) or len(all_ips) >= max_total)
    plan.counts = {
        "enis": len([e for e in live if e.status in (ATTACHING, INUSE)]),
        "total": len(all_ips),
        "free": len(free),
        "allocated": len(allocated),
        "releasing": len(release),
        "pending": state.pending,
    }
    for cond in (COND_LIMIT, COND_HOTSWAP, COND_VSW):
        plan.conditions.setdefault(cond, Condition(False, "OK", ""))
    return plan


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ip.split("."))


def _release_order(ips: set[str], inuse: list[ENIView], allocated: frozenset[str],
                   state: NodeState) -> list[str]:
    """Which of ``ips`` to give back first: from the ENI with the fewest pods (so whole ENIs
    empty and can go), the primary ENI's last (it never goes). Among ENIs as busy, from the
    one holding the most IPs: what stays is on the smallest, whose surplus takes the fewest
    unassigns, while the others go whole (a detach however many IPs they hold); then from
    the one with the fewest of ``ips`` left, so one mostly given back goes whole; then the
    longest idle."""
    eni_of = {ip: e for e in inuse for ip in e.ips}
    pods = {e.eni_id: len(set(e.ips) & allocated) for e in inuse}
    left = {e.eni_id: len(set(e.ips) & ips) for e in inuse}

    def key(ip: str) -> tuple[bool, int, int, int, str, float, tuple[int, ...]]:
        e = eni_of[ip]
        return (e.primary, pods[e.eni_id], -len(e.ips), left[e.eni_id], e.eni_id,
                state.free_since.get(ip, state.now), _ip_key(ip))

    return sorted(ips, key=key)
