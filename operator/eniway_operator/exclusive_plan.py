"""Exclusive-ENI planning: a pure function from the cluster's exclusive pods, their ENIs
and the nodes' slots to the cloud calls that give each pod its own ENI.

A pod in exclusive mode owns a whole ENI: its primary IP is the pod's IP and its security
groups are the pod's. Such ENIs cannot be planned per node like the shared pool, because a
fixed-IP ENI moves: when its pod comes back on another node of the same zone the ENI is
detached from the old instance and attached to the new one, keeping its IP and MAC.

No I/O and no clock reads: the caller passes ``now``. The reconciler observes pods, ENIs
and nodes, calls ``plan_exclusive`` and acts on the ``ExclusivePlan``.

Rules decided here (each one table-tested):

- Slots. A node offers ``min(split, ENIs - 1 - shared ENIs)`` exclusive slots, where
  ``split`` is the node's ``exclusive_enis`` setting; an instance type that cannot attach
  ENIs while running offers none while it runs, with a reason for an Event. The shared
  pool keeps out of ``reserved_slots`` (the split, or the exclusive ENIs attached if more).
- A pod's ENI is keyed by its claim: ``namespace/name`` for a fixed IP (a StatefulSet pod,
  or a policy saying ``Fixed``), the pod's uid otherwise (``Elastic``).
- An ENI no live pod claims is detached; an Elastic one is then deleted (or reused at once
  by a pod asking for the same vSwitch and security groups), a Fixed one waits Available
  for ``release_after`` and is deleted only if still unclaimed.
- A fixed ENI in another zone than its pod's node is never swapped for a new one: the pod
  gets a ``ZoneMismatch`` problem (an Event and a condition) and keeps waiting.
- Nothing moves while an ENI is Creating, Attaching or Detaching: the next round sees the
  cloud's answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eniway_operator.cloud.base import InstanceLimits, VSwitch

# Cloud-side ENI states (ECS names), as in the shared planner.
CREATING = "Creating"
AVAILABLE = "Available"
ATTACHING = "Attaching"
INUSE = "InUse"
DETACHING = "Detaching"

ELASTIC = "Elastic"
FIXED = "Fixed"
IP_TYPES = (ELASTIC, FIXED)

# Reasons of the problems the planner reports (Event reason and condition reason alike).
REASON_ZONE = "ZoneMismatch"
REASON_NO_VSWITCH = "NoVSwitch"
REASON_NO_SLOT = "NoExclusiveSlot"
REASON_HOTSWAP = "HotSwapUnsupported"
REASON_NO_NODE = "NodeUnknown"


@dataclass(frozen=True)
class Settings:
    """What a pod's policy (or its annotation) asks for. Empty tuples: the node's own
    vSwitches and security groups (the shared pool's)."""

    vswitch_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    ip_type: str = ELASTIC
    release_after: float = 0.0  # seconds an unclaimed Fixed ENI is kept


@dataclass(frozen=True)
class PodClaim:
    """A scheduled pod that wants (or still holds) an exclusive ENI."""

    namespace: str
    name: str
    uid: str
    node: str
    settings: Settings = Settings()
    stateful: bool = False  # owned by a StatefulSet: its IP is fixed whatever the policy says
    terminating: bool = False  # being deleted: keeps its ENI where it is, asks for nothing

    @property
    def fixed(self) -> bool:
        return self.stateful or self.settings.ip_type == FIXED

    @property
    def key(self) -> str:
        """What the ENI is claimed by: the pod's name when the IP is fixed (a re-created
        pod has a new uid but the same name), its uid otherwise."""
        return f"{self.namespace}/{self.name}" if self.fixed else self.uid

    @property
    def pod(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ENI:
    """An exclusive ENI as the planner sees it (cloud state joined with its resource)."""

    eni_id: str
    status: str  # Creating, Available, Attaching, InUse, Detaching
    zone_id: str
    vswitch_id: str
    security_group_ids: tuple[str, ...] = ()
    instance_id: str = ""
    claim: str = ""  # the PodClaim.key it belongs to; "" when released (Elastic)
    fixed: bool = False
    release_after: float = 0.0
    unclaimed_since: float | None = None
    deleting: bool = False  # its resource is being deleted: hands off


@dataclass(frozen=True)
class Node:
    """One node's side of exclusive capacity."""

    name: str
    instance_id: str
    zone_id: str
    limits: InstanceLimits
    instance_running: bool = True
    split: int = 0  # the node's exclusive_enis setting: secondary-ENI slots for exclusive pods
    shared_enis: int = 0  # secondary ENIs the shared pool holds (Attaching/InUse/Detaching)
    vswitches: tuple[VSwitch, ...] = ()  # described vSwitches the node's pods may use
    default_vswitches: tuple[str, ...] = ()  # the shared pool's for the zone, or the instance's
    default_security_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class State:
    now: float
    nodes: Mapping[str, Node]
    claims: tuple[PodClaim, ...] = ()
    enis: tuple[ENI, ...] = ()


@dataclass(frozen=True)
class Create:
    """Create an ENI for a claim; the next round attaches it."""

    claim: str
    pod: str
    node: str
    vswitch_id: str
    security_group_ids: tuple[str, ...]
    fixed: bool
    release_after: float


@dataclass(frozen=True)
class Attach:
    eni_id: str
    instance_id: str
    node: str
    claim: str
    pod: str


@dataclass(frozen=True)
class Detach:
    eni_id: str
    instance_id: str


@dataclass(frozen=True)
class Delete:
    eni_id: str


Action = Create | Attach | Detach | Delete


@dataclass(frozen=True)
class Problem:
    """Why a pod's ENI does not come: an Event on the pod and a condition on it."""

    pod: str
    reason: str
    message: str


@dataclass(frozen=True)
class Capacity:
    """A node's exclusive slots (its extended resource's capacity) and, when it has none
    although it asks for some, why."""

    slots: int
    reason: str = ""
    message: str = ""


@dataclass
class ExclusivePlan:
    actions: list[Action] = field(default_factory=list)
    capacity: dict[str, Capacity] = field(default_factory=dict)  # node -> slots
    reserved: dict[str, int] = field(default_factory=dict)  # node -> slots the pool leaves
    problems: list[Problem] = field(default_factory=list)
    unclaimed_since: dict[str, float | None] = field(default_factory=dict)  # changes only
    released: dict[str, str] = field(default_factory=dict)  # eni -> claim it no longer has
    ready: dict[str, str] = field(default_factory=dict)  # claim -> eni InUse on its node


def node_capacity(node: Node) -> Capacity:
    """Exclusive slots: at most ENIs - 1, less what the shared pool holds, at most the
    split; none on a running instance that cannot attach ENIs."""
    if node.split <= 0:
        return Capacity(0)
    if not node.limits.hot_swap and node.instance_running:
        return Capacity(0, REASON_HOTSWAP,
                        f"{node.limits.instance_type} cannot attach ENIs while running: "
                        "no exclusive-ENI pods on this node")
    room = max(node.limits.max_enis - 1 - node.shared_enis, 0)
    return Capacity(min(node.split, room))


def reserved_slots(split: int, exclusive_attached: int) -> int:
    """Device slots the shared pool must leave alone: the split, or more while more
    exclusive ENIs are attached (after the split was lowered)."""
    return max(split, exclusive_attached, 0)


def plan_exclusive(state: State) -> ExclusivePlan:
    """Decide what to do now. Idempotent: the same state yields the same plan."""
    plan = ExclusivePlan()
    by_instance = {n.instance_id: n for n in state.nodes.values()}
    live = [e for e in state.enis if not e.deleting]
    # Device slots in use per instance: every exclusive ENI that occupies one.
    used: dict[str, int] = {}
    for e in live:
        if e.instance_id and e.status in (ATTACHING, INUSE, DETACHING):
            used[e.instance_id] = used.get(e.instance_id, 0) + 1
    for name, n in sorted(state.nodes.items()):
        plan.capacity[name] = node_capacity(n)
        plan.reserved[name] = reserved_slots(n.split, used.get(n.instance_id, 0))

    claims = sorted(state.claims, key=lambda c: (c.namespace, c.name, c.uid))
    by_claim: dict[str, ENI] = {}
    for e in sorted(live, key=lambda e: e.eni_id):
        if e.claim:
            by_claim.setdefault(e.claim, e)  # one ENI per claim; extras count as unclaimed
    wanted = {c.key for c in claims}
    # Released ENIs (pod gone): candidates for reuse by a new Elastic pod this round.
    spare = [e for e in live if e.status == AVAILABLE and not e.fixed
             and (not e.claim or e.claim not in wanted or by_claim.get(e.claim) is not e)]
    reused: set[str] = set()

    for c in claims:
        node = state.nodes.get(c.node)
        eni = by_claim.get(c.key)
        if node is None:
            if not c.terminating:
                plan.problems.append(Problem(c.pod, REASON_NO_NODE,
                                             f"node {c.node} is not known to eniway"))
            continue
        if eni is not None and eni.unclaimed_since is not None:
            plan.unclaimed_since[eni.eni_id] = None
        if c.terminating:
            continue  # holds whatever it has; its ENI goes once the pod is gone
        if eni is None:
            _new_eni(plan, state, node, c, spare, reused, used)
            continue
        if eni.zone_id and node.zone_id and eni.zone_id != node.zone_id:
            plan.problems.append(Problem(
                c.pod, REASON_ZONE,
                f"its fixed IP's ENI {eni.eni_id} is in zone {eni.zone_id}, node {c.node} "
                f"in zone {node.zone_id}: schedule the pod into {eni.zone_id}"))
            continue
        if eni.status == INUSE and eni.instance_id == node.instance_id:
            plan.ready[c.key] = eni.eni_id
        elif eni.status == INUSE and eni.instance_id:
            old = by_instance.get(eni.instance_id)
            if not _still_there(claims, c, old):
                plan.actions.append(Detach(eni.eni_id, eni.instance_id))  # the move starts
        elif eni.status == AVAILABLE:
            _attach(plan, node, c, eni, used)
        # Creating, Attaching, Detaching: the cloud is busy with it; wait.

    for e in sorted(live, key=lambda e: e.eni_id):
        if e.eni_id in reused or (e.claim in wanted and by_claim.get(e.claim) is e):
            continue
        if e.status == INUSE and e.instance_id:
            plan.actions.append(Detach(e.eni_id, e.instance_id))
        elif e.status == AVAILABLE and not e.fixed:
            plan.actions.append(Delete(e.eni_id))
        elif e.status == AVAILABLE:
            since = e.unclaimed_since
            if since is None:
                plan.unclaimed_since[e.eni_id] = state.now
            elif state.now - since >= e.release_after:
                plan.actions.append(Delete(e.eni_id))
        if e.claim and e.claim not in wanted and not e.fixed:
            plan.released[e.eni_id] = e.claim
    return plan


def _still_there(claims: list[PodClaim], c: PodClaim, old: Node | None) -> bool:
    """Whether a pod of the same claim still runs on the ENI's old node (a terminating
    one still holding the link in its netns): then the move waits."""
    return old is not None and any(
        o.key == c.key and o.node == old.name and o.uid != c.uid for o in claims)


def _new_eni(plan: ExclusivePlan, state: State, node: Node, c: PodClaim,
             spare: list[ENI], reused: set[str], used: dict[str, int]) -> None:
    vsw = _pick_vswitch(node, c.settings.vswitch_ids)
    if vsw is None:
        asked = ", ".join(c.settings.vswitch_ids or node.default_vswitches) or "none"
        plan.problems.append(Problem(
            c.pod, REASON_NO_VSWITCH,
            f"no vSwitch with free addresses in zone {node.zone_id} among {asked}"))
        return
    sgs = tuple(sorted(c.settings.security_group_ids or node.default_security_groups))
    if not c.fixed:
        allowed = set(c.settings.vswitch_ids or node.default_vswitches)
        for e in spare:
            if (e.eni_id not in reused and e.zone_id == node.zone_id
                    and e.vswitch_id in allowed and tuple(sorted(e.security_group_ids)) == sgs):
                if _attach(plan, node, c, e, used):
                    reused.add(e.eni_id)
                return
    if node_capacity(node).slots <= used.get(node.instance_id, 0):
        _no_slot(plan, node, c)
        return
    used[node.instance_id] = used.get(node.instance_id, 0) + 1  # its slot once attached
    plan.actions.append(Create(c.key, c.pod, node.name, vsw, sgs, c.fixed,
                               c.settings.release_after if c.fixed else 0.0))


def _attach(plan: ExclusivePlan, node: Node, c: PodClaim, eni: ENI,
            used: dict[str, int]) -> bool:
    cap = node_capacity(node)
    taken = used.get(node.instance_id, 0)
    devices = node.limits.max_enis - 1 - node.shared_enis
    if cap.slots <= taken or devices <= taken:
        _no_slot(plan, node, c)
        return False
    used[node.instance_id] = taken + 1
    plan.actions.append(Attach(eni.eni_id, node.instance_id, node.name, c.key, c.pod))
    return True


def _no_slot(plan: ExclusivePlan, node: Node, c: PodClaim) -> None:
    cap = node_capacity(node)
    why = cap.message or (f"node {node.name} has {cap.slots} exclusive-ENI slots, "
                          "all taken (a detaching ENI holds its slot until it is gone)")
    plan.problems.append(Problem(c.pod, REASON_NO_SLOT, why))


def _pick_vswitch(node: Node, asked: tuple[str, ...]) -> str | None:
    """The vSwitch of the node's zone with the most free addresses among those asked
    (the node's own when the policy names none)."""
    ids = asked or node.default_vswitches
    described = {v.vswitch_id: v for v in node.vswitches}
    best: VSwitch | None = None
    for vid in ids:
        v = described.get(vid)
        if v is None or v.available_ips <= 0 or (v.zone_id and v.zone_id != node.zone_id):
            continue
        if best is None or v.available_ips > best.available_ips:
            best = v
    if best is None and not asked and node.default_vswitches and not node.vswitches:
        return node.default_vswitches[0]  # the instance's own, not described
    return best.vswitch_id if best else None
