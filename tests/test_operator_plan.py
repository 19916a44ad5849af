"""Pool planning, table-driven: limits, batching, handshake, vSwitch choice, reclaim."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from eniway_operator.cloud.base import InstanceLimits, VSwitch
from eniway_operator.config import PoolConfig
from eniway_operator.plan import (
    ATTACHING,
    AVAILABLE,
    COND_HOTSWAP,
    COND_LIMIT,
    COND_VSW,
    DETACHING,
    INUSE,
    RELEASE_BATCH_WAIT,
    WHOLE_ENI_WAIT,
    AssignIPs,
    AttachENI,
    CreateENI,
    DeleteENI,
    DetachENI,
    ENIView,
    NodeState,
    UnassignIPs,
    plan_node,
)

G6 = InstanceLimits("ecs.g6.xlarge", max_enis=3, ips_per_eni=10)  # 2 x 9 pod IPs
BIG = InstanceLimits("ecs.g6.4xlarge", max_enis=8, ips_per_eni=20)  # 7 x 19
T6 = InstanceLimits("ecs.t6-c1m1.large", max_enis=2, ips_per_eni=2, hot_swap=False)
# EC2's rules on the same figures: the primary ENI's secondary IPs serve pods too.
M5 = InstanceLimits("m5.xlarge", max_enis=3, ips_per_eni=10, pods_on_primary_eni=True,
                    max_pods_extra=2)  # 3 x 9 pod IPs
PRIMARY = ENIView("eni-primary0", INUSE, "vsw-aaaa0001", primary=True)
VSW = (VSwitch("vsw-aaaa0001", "vpc-1", "z1", "10.0.0.0/24", 200),
       VSwitch("vsw-bbbb0002", "vpc-1", "z1", "10.0.1.0/24", 50),
       VSwitch("vsw-cccc0003", "vpc-1", "z2", "10.0.2.0/24", 250))
CFG = PoolConfig(vswitches={"z1": ("vsw-aaaa0001", "vsw-bbbb0002")})


def ips(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(1, n + 1))


def state(**kw: object) -> NodeState:
    base = dict(limits=G6, config=CFG, now=1000.0, zone_id="z1", enis=(PRIMARY,),
                vswitches=VSW, default_vswitch="vsw-aaaa0001", warmed_up=True)
    base.update(kw)
    return NodeState(**base)  # type: ignore[arg-type]


def kinds(plan: object) -> list[str]:
    return [type(a).__name__ for a in plan.actions]  # type: ignore[attr-defined]


# --- growth ------------------------------------------------------------------------------

@pytest.mark.parametrize("enis,pending,cfg,expect", [
    # nothing wanted, nothing done
    ((PRIMARY,), 0, CFG, []),
    # new node, min pool 3: one ENI created with the 3 IPs at once on the freest vSwitch
    ((PRIMARY,), 0, replace(CFG, min_pool_size=3), [CreateENI("vsw-aaaa0001", 3)]),
    # pending pods surge past the ENI's room: two ENIs, the creates carrying the 12 pods'
    # IPs, no more (nothing idle or to give back once they hold them)
    ((PRIMARY,), 12, CFG, [CreateENI("vsw-aaaa0001", 9), CreateENI("vsw-aaaa0001", 3)]),
    # room on an InUse ENI: assign there (2 free already: the 2 more the pods need)
    ((PRIMARY, ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 2))), 4, CFG,
     [AssignIPs("eni-a1", 2)]),
    # an ENI attaching counts as coming: nothing more
    ((PRIMARY, ENIView("eni-a1", ATTACHING, "vsw-aaaa0001")), 4, CFG, []),
    # an Available ENI of ours is attached before anything is created
    ((PRIMARY, ENIView("eni-a1", AVAILABLE, "vsw-aaaa0001")), 4, CFG, [AttachENI("eni-a1")]),
    # surge off: pending pods are ignored
    ((PRIMARY,), 5, replace(CFG, surge_pending=False), []),
    # unmanaged ENIs are never filled
    ((PRIMARY, ENIView("eni-x", INUSE, "vsw-aaaa0001", managed=False)), 2, CFG,
     [CreateENI("vsw-aaaa0001", 2)]),
    # the same without pods waiting (min_pool_size): exactly what is missing
    ((PRIMARY, ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 2))), 0,
     replace(CFG, min_pool_size=4), [AssignIPs("eni-a1", 2)]),
])
def test_growth(enis: tuple[ENIView, ...], pending: int, cfg: PoolConfig,
                expect: list[object]) -> None:
    assert plan_node(state(enis=enis, pending=pending, config=cfg)).actions == expect


def test_assign_batches_of_ten() -> None:
    e = ENIView("eni-b1", INUSE, "vsw-aaaa0001")
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=19))
    assert plan.actions == [AssignIPs("eni-b1", 10), AssignIPs("eni-b1", 9)]
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=25))
    # a new ENI gets its IPs in its creating call (ECS takes up to 49 there): the 6 pods'
    assert plan.actions == [AssignIPs("eni-b1", 10), AssignIPs("eni-b1", 9),
                            CreateENI("vsw-aaaa0001", 6)]
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), config=replace(CFG, min_pool_size=25)))
    assert plan.actions == [AssignIPs("eni-b1", 10), AssignIPs("eni-b1", 9),
                            CreateENI("vsw-aaaa0001", 6)]


def test_ips_at_creation_is_the_providers_rule() -> None:
    # A cloud taking fewer IPs in the creating call gets no more there; the rest follow
    # as assigns once the ENI is attached.
    e = ENIView("eni-b1", INUSE, "vsw-aaaa0001")
    few = replace(BIG, ips_at_create=6)
    plan = plan_node(state(limits=few, enis=(PRIMARY, e), pending=25))
    assert plan.actions == [AssignIPs("eni-b1", 10), AssignIPs("eni-b1", 9),
                            CreateENI("vsw-aaaa0001", 6)]
    plan = plan_node(state(limits=replace(BIG, ips_at_create=0), enis=(PRIMARY,), pending=5))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 0)]


def test_surge_asks_for_the_pods_and_keeps_what_is_free() -> None:
    e = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 3))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=4))
    assert plan.actions == [AssignIPs("eni-b1", 1)]  # 1 missing: 1 asked, no batch ahead
    full = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 13))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, full), pending=4))
    assert plan.actions == [] and plan.release == frozenset()  # kept while pods arrive
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, full), pending=0))
    assert len(plan.release) == 8  # surge over: back to max_pool_size


def test_pods_that_keep_arriving_get_whole_batches_and_whole_enis() -> None:
    # Pods waited at the last round and more came since: each call carries a whole batch
    # (the ENI's room permitting) and a new ENI its whole room, not a call a round.
    e = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 3))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=4, pending_before=2))
    assert plan.actions == [AssignIPs("eni-b1", 10)]
    room = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 13))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, room), pending=16, pending_before=9))
    assert plan.actions == [AssignIPs("eni-b1", 6)]  # the ENI's room, no more
    plan = plan_node(state(limits=BIG, enis=(PRIMARY,), pending=6, pending_before=1))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 19)]
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=25, pending_before=20))
    assert plan.actions == [AssignIPs("eni-b1", 10), AssignIPs("eni-b1", 6),
                            CreateENI("vsw-aaaa0001", 19)]
    # pods served as fast as they come: as many wait as at the last round, but more hold
    # IPs than then, so more came
    held = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 13))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, held), pending=3, pending_before=3,
                           allocated=frozenset(held.ips), allocated_before=10))
    assert plan.actions == [AssignIPs("eni-b1", 6)]  # the ENI's room (3 asked for)
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, held), pending=3, pending_before=3,
                           allocated=frozenset(held.ips), allocated_before=13))
    assert plan.actions == [AssignIPs("eni-b1", 3)]  # nothing came: their IPs only
    # a burst (none waited before) or pods no longer coming: their IPs only
    for before in (0, 6, 9):
        plan = plan_node(state(limits=BIG, enis=(PRIMARY,), pending=6, pending_before=before))
        assert plan.actions == [CreateENI("vsw-aaaa0001", 6)], before
    # surge off: pending pods are ignored, waiting or not
    plan = plan_node(state(limits=BIG, enis=(PRIMARY,), pending=6, pending_before=1,
                           config=replace(CFG, surge_pending=False)))
    assert plan.actions == []


def test_surge_leaves_nothing_idle() -> None:
    # Whatever the burst and the pool's bounds, once the waiting pods hold their IPs nothing
    # the surge asked for is left free: no IP idles after it, none is given back.
    for pending, room in itertools.product((1, 4, 9, 12, 19, 25, 40, 60, 200), (0, 5, 19)):
        e = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 19 - room))  # all held
        for cfg in (CFG, replace(CFG, max_pool_size=0), replace(CFG, max_pool_size=12)):
            plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=pending,
                                   config=cfg, allocated=frozenset(e.ips)))
            got = sum(a.count if isinstance(a, AssignIPs) else a.ip_count
                      for a in plan.actions if isinstance(a, AssignIPs | CreateENI))
            assert got == min(pending, 7 * 19 - len(e.ips)), (pending, room, cfg)
            if got < pending:  # short only where the instance is full
                assert plan.conditions[COND_LIMIT].status, (pending, room)
    # the free target is min_pool_size or the pods, whichever is more, as without a surge
    e = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 5))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=4, allocated=frozenset(
        e.ips), config=replace(CFG, min_pool_size=3, max_pool_size=12)))
    assert plan.actions == [AssignIPs("eni-b1", 4)]


def test_warm_up_once() -> None:
    cfg = replace(CFG, warm_up_size=7)
    plan = plan_node(state(config=cfg, warmed_up=False))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 7)]
    assert not plan.warmed_up
    e = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 7))
    plan = plan_node(state(config=cfg, warmed_up=False, enis=(PRIMARY, e)))
    assert plan.warmed_up
    # after warm-up, max_pool_size (5) applies: 2 are marked for release
    plan = plan_node(state(config=cfg, warmed_up=True, enis=(PRIMARY, e)))
    assert len(plan.release) == 2


# --- limits (invariant 4) ----------------------------------------------------------------

def test_limit_reached_and_condition() -> None:
    full = (PRIMARY, ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 9)),
            ENIView("eni-a2", INUSE, "vsw-aaaa0001", ips("10.0.1", 9)))
    held = frozenset(ips("10.0.0", 9) + ips("10.0.1", 7))  # 2 free left
    plan = plan_node(state(enis=full, pending=3, allocated=held))
    assert plan.actions == []
    assert plan.conditions[COND_LIMIT].status


def test_primary_never_touched() -> None:
    prim = ENIView("eni-p", INUSE, "vsw-aaaa0001", primary=True, empty_since=0.0)
    plan = plan_node(state(enis=(prim,), config=replace(CFG, empty_eni_reclaim_after=0)))
    assert plan.actions == []


@pytest.mark.parametrize("limits", [G6, BIG, T6, InstanceLimits("x", 4, 3), M5,
                                    replace(BIG, pods_on_primary_eni=True, ips_per_call=4)])
def test_random_states_never_exceed_limits(limits: InstanceLimits) -> None:
    """Invariant 4 under random states: applying the plan's actions never goes past the
    ENI count or the IPs per ENI, never detaches the primary, never unassigns a pod's IP,
    never puts more IPs in a call than the cloud takes."""
    rng = random.Random(limits.instance_type + str(limits.pods_on_primary_eni))
    cap = limits.ips_per_eni - 1
    per_call = limits.ips_per_call  # the pool sets none: the cloud's own
    counter = itertools.count()
    for _ in range(400):
        allocated: set[str] = set()
        prim = PRIMARY
        if limits.pods_on_primary_eni:
            prim = replace(PRIMARY, ips=ips("10.9.9", rng.randint(0, cap)))
            allocated |= {a for a in prim.ips if rng.random() < 0.5}
        enis = [prim]
        for i in range(rng.randint(0, limits.max_enis - 1)):
            status = rng.choice([INUSE, INUSE, ATTACHING, AVAILABLE, DETACHING])
            n = rng.randint(0, cap) if status == INUSE else 0
            addr = ips(f"10.{i}.{next(counter) % 250}", n)
            allocated |= {a for a in addr if rng.random() < 0.5}
            enis.append(ENIView(f"eni-r{i}", status, "vsw-aaaa0001", addr,
                                empty_since=0.0 if not addr else None))
        all_ips = [ip for e in enis for ip in e.ips]
        release = frozenset(ip for ip in all_ips if rng.random() < 0.3)
        acked = frozenset(ip for ip in release if rng.random() < 0.7) | frozenset(
            ip for ip in allocated if rng.random() < 0.2)  # a buggy agent acking held IPs
        cfg = replace(CFG, min_pool_size=rng.randint(0, 5), max_pool_size=rng.randint(5, 9),
                      empty_eni_reclaim_after=0, idle_ip_reclaim_after=rng.choice([0, 1]))
        st = state(limits=limits, config=cfg, enis=tuple(enis),
                   allocated=frozenset(allocated), release=release, acknowledged=acked,
                   pending=rng.randint(0, 30), instance_running=rng.random() < 0.7)
        plan = plan_node(st)
        on_instance = len([e for e in enis[1:] if e.status in (INUSE, ATTACHING, DETACHING)])
        per_eni = {e.eni_id: len(e.ips) for e in enis}
        for a in plan.actions:
            if isinstance(a, (CreateENI, AttachENI)):
                on_instance += 1
                assert limits.hot_swap or not st.instance_running
            if isinstance(a, CreateENI):
                assert a.ip_count <= min(49, cap)
            if isinstance(a, AssignIPs):
                assert 1 <= a.count <= per_call
                assert a.eni_id != PRIMARY.eni_id or limits.pods_on_primary_eni
                per_eni[a.eni_id] += a.count
            if isinstance(a, UnassignIPs):
                assert 1 <= len(a.ips) <= per_call
                assert not set(a.ips) & allocated, "unassigned a pod's IP"
                assert set(a.ips) <= release & acked
            if isinstance(a, (DetachENI, DeleteENI)):
                assert a.eni_id != PRIMARY.eni_id
            if isinstance(a, DetachENI):  # what it holds goes with it: released ones only
                held = set(next(e.ips for e in enis if e.eni_id == a.eni_id))
                assert not held & allocated and held <= release & acked
            if isinstance(a, AttachENI):
                assert a.eni_id in {e.eni_id for e in enis if e.status == AVAILABLE}
        assert on_instance <= limits.max_enis - 1
        assert all(n <= cap for n in per_eni.values()), per_eni


# --- cloud rules read from the limits -------------------------------------------------

def test_ips_per_call_is_capped_by_the_clouds() -> None:
    e = ENIView("eni-b1", INUSE, "vsw-aaaa0001")
    plan = plan_node(state(limits=replace(BIG, ips_per_call=4), enis=(PRIMARY, e), pending=9))
    # the 9 the pods need, in calls of the cloud's 4 at most
    assert plan.actions == [AssignIPs("eni-b1", 4), AssignIPs("eni-b1", 4),
                            AssignIPs("eni-b1", 1)]
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=9,
                           config=replace(CFG, ips_per_call=3)))
    assert plan.actions == [AssignIPs("eni-b1", 3)] * 3  # the pool's own setting is lower
    full = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.0", 9))
    rel = frozenset(full.ips[:7])
    plan = plan_node(state(limits=replace(BIG, ips_per_call=4), enis=(PRIMARY, full),
                           release=rel, acknowledged=rel, marked_at={ip: 0.0 for ip in rel},
                           config=replace(CFG, max_pool_size=2)))
    assert [len(a.ips) for a in plan.actions if isinstance(a, UnassignIPs)] == [4, 3]
    # no setting (0, the default): as many as the cloud takes, one call for EC2's ENI room
    ec2 = replace(BIG, pods_on_primary_eni=True, ips_per_call=19, ips_at_create=19)
    m5 = ENIView("eni-m1", INUSE, "vsw-aaaa0001")
    plan = plan_node(state(limits=ec2, enis=(_primary_with(19), m5), pending=25,
                           allocated=frozenset(_primary_with(19).ips)))
    assert plan.actions == [AssignIPs("eni-m1", 19), CreateENI("vsw-aaaa0001", 6)]
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, e), pending=25))
    assert plan.actions == [AssignIPs("eni-b1", 10), AssignIPs("eni-b1", 9),
                            CreateENI("vsw-aaaa0001", 6)]  # ECS takes 10 a call


def _primary_with(n: int) -> ENIView:
    return replace(PRIMARY, ips=ips("10.0.9", n))


def test_pods_on_the_primary_eni_fill_it_before_creating() -> None:
    # ECS: the primary ENI carries the node; its secondary IPs are never the pool's
    plan = plan_node(state(enis=(_primary_with(3),), pending=2))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 2)] and plan.counts["total"] == 0
    # EC2: the primary ENI is filled first
    plan = plan_node(state(limits=M5, pending=2))
    assert plan.actions == [AssignIPs(PRIMARY.eni_id, 2)]
    plan = plan_node(state(limits=M5, config=replace(CFG, min_pool_size=3)))
    assert plan.actions == [AssignIPs(PRIMARY.eni_id, 3)]
    # ...ahead of a fuller secondary ENI: it never leaves, the secondary may empty
    sec = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 5))
    plan = plan_node(state(limits=M5, enis=(_primary_with(1), sec),
                           config=replace(CFG, min_pool_size=8)))
    assert plan.actions == [AssignIPs(PRIMARY.eni_id, 2)]
    # the primary full: a secondary ENI is created, no more than max_enis - 1 of them
    held = frozenset(ips("10.0.9", 9))
    plan = plan_node(state(limits=M5, enis=(_primary_with(9),), allocated=held, pending=1))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 1)]
    full = (_primary_with(9), ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 9)),
            ENIView("eni-a2", INUSE, "vsw-aaaa0001", ips("10.0.1", 9)))
    every = held | frozenset(ips("10.0.0", 9) + ips("10.0.1", 9))
    plan = plan_node(state(limits=M5, enis=full, allocated=every, pending=1))
    assert plan.actions == [] and plan.conditions[COND_LIMIT].status
    assert "27 pod IPs" in plan.conditions[COND_LIMIT].message
    assert plan.counts["total"] == 27 and plan.warmed_up
    # a blocked vSwitch is not asked for more, the primary's no more than any
    plan = plan_node(state(limits=M5, pending=1, blocked_vswitches={"vsw-aaaa0001": 2000.0}))
    assert plan.actions == [CreateENI("vsw-bbbb0002", 1)]


def test_pods_on_the_primary_eni_released_through_the_handshake() -> None:
    prim = _primary_with(9)
    plan = plan_node(state(limits=M5, enis=(prim,)))
    assert plan.actions == [] and len(plan.release) == 4  # marked only: max_pool_size 5
    # acknowledged, every one of them: unassigned, never detached nor deleted
    every = frozenset(prim.ips)
    plan = plan_node(state(limits=M5, enis=(prim,), release=every, acknowledged=every,
                           marked_at={ip: 0.0 for ip in every},
                           config=replace(CFG, max_pool_size=0, empty_eni_reclaim_after=0)))
    assert plan.actions == [UnassignIPs(PRIMARY.eni_id, prim.ips)]
    empty = replace(PRIMARY, empty_since=0.0)
    assert plan_node(state(limits=M5, enis=(empty,), config=replace(
        CFG, empty_eni_reclaim_after=0))).actions == []
    # not acknowledged, or held by a pod: kept
    plan = plan_node(state(limits=M5, enis=(prim,), release=every,
                           acknowledged=every - {"10.0.9.1"}, allocated=frozenset({"10.0.9.2"}),
                           marked_at={ip: 0.0 for ip in every},
                           config=replace(CFG, max_pool_size=0)))
    assert plan.actions == [UnassignIPs(PRIMARY.eni_id, tuple(
        ip for ip in prim.ips if ip not in ("10.0.9.1", "10.0.9.2")))]
    # a secondary ENI drains before the primary: it can go whole
    sec = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 3))
    plan = plan_node(state(limits=M5, enis=(_primary_with(5), sec)))
    assert plan.release == frozenset(sec.ips)


# --- release handshake (invariant 2) -----------------------------------------------------

def _eni_with(n: int) -> ENIView:
    return ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", n))


def test_excess_is_marked_not_unassigned() -> None:
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8))))
    assert plan.actions == []
    assert len(plan.release) == 3  # 8 free, ceiling max_pool_size 5


def test_unassign_waits_briefly_to_fill_a_batch() -> None:
    rel = frozenset(ips("10.0.0", 3))
    young = {ip: 998.0 for ip in rel}
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8)), release=rel, acknowledged=rel,
                           marked_at=young))
    assert plan.actions == []
    old = {ip: 990.0 for ip in rel}
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8)), release=rel, acknowledged=rel,
                           marked_at=old))
    assert plan.actions == [UnassignIPs("eni-a1", tuple(sorted(rel)))]
    # a full batch waits too: pods leave in waves, and the ENI may yet go whole...
    ten = frozenset(ips("10.0.0", 10))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, _eni_with(12)), release=ten,
                           acknowledged=ten, marked_at={ip: 999.0 for ip in ten}))
    assert plan.actions == []
    every = frozenset(ips("10.0.0", 12))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, _eni_with(12)), release=every,
                           acknowledged=every, marked_at={ip: 999.5 for ip in every}))
    assert [type(a) for a in plan.actions] == [DetachENI]  # ...as here, two calls in all
    # ...and once it waited, the batch goes
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, _eni_with(12)), release=ten,
                           acknowledged=ten, marked_at={ip: 994.0 for ip in ten}))
    assert [type(a) for a in plan.actions] == [UnassignIPs]


def test_unassign_only_acknowledged() -> None:
    rel = frozenset(ips("10.0.0", 3))
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8)), release=rel,
                           acknowledged=frozenset({"10.0.0.1", "10.0.0.2"})))
    assert plan.actions == [UnassignIPs("eni-a1", ("10.0.0.1", "10.0.0.2"))]
    assert plan.release == rel  # forgotten only after the call succeeded


def test_what_stays_free_stays_on_the_smallest_idle_eni() -> None:
    # No pods: what the pool keeps (max_pool_size 5) stays on the ENI holding the fewest
    # IPs, so the others go whole and the one kept needs no unassign to trim.
    small = ENIView("eni-z9", INUSE, "vsw-aaaa0001", ips("10.0.0", 5))
    big = ENIView("eni-b1", INUSE, "vsw-aaaa0001", ips("10.0.1", 19))
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, small, big)))
    assert plan.release == frozenset(big.ips)
    # pods still come first: an ENI a pod uses keeps its free IPs before an idle one
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, small, big),
                           allocated=frozenset({"10.0.1.19"})))
    assert plan.release == frozenset(small.ips) | frozenset(big.ips[:13])


def test_an_eni_released_whole_is_detached_not_unassigned() -> None:
    a = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 9))
    b = ENIView("eni-a2", INUSE, "vsw-aaaa0001", ips("10.0.1", 9))
    rel = frozenset(ips("10.0.1", 9))
    young = {ip: 999.0 for ip in rel}
    plan = plan_node(state(enis=(PRIMARY, a, b), release=rel, acknowledged=rel,
                           marked_at=young))
    assert plan.actions == [DetachENI("eni-a2")]  # its nine IPs go with it, at once
    # one of them not acknowledged yet: wait for it, even with a full batch acknowledged
    big = ENIView("eni-b2", INUSE, "vsw-aaaa0001", ips("10.0.2", 19))
    every = frozenset(big.ips)
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, a, big), release=every,
                           acknowledged=every - {"10.0.2.19"}, marked_at={
                               ip: 999.0 for ip in every}))
    assert plan.actions == []
    # ...past the batch wait too, as the ENI is to go whole (unassigning the rest first
    # would be calls for nothing)...
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, a, big), release=every,
                           acknowledged=every - {"10.0.2.19"}, marked_at={
                               ip: 990.0 for ip in every}))
    assert plan.actions == []
    # ...but not for ever: after WHOLE_ENI_WAIT batch waits the acknowledged ones go
    late = 1000.0 - RELEASE_BATCH_WAIT * WHOLE_ENI_WAIT - 0.1
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, a, big), release=every,
                           acknowledged=every - {"10.0.2.19"}, marked_at={
                               ip: late for ip in every}))
    assert [type(x) for x in plan.actions] == [UnassignIPs, UnassignIPs]
    # an ENI a pod still uses does not go whole: its acknowledged IPs go after one wait
    plan = plan_node(state(limits=BIG, enis=(PRIMARY, a, big), release=every - {
        "10.0.2.19"}, acknowledged=every - {"10.0.2.19"}, allocated=frozenset(
            {"10.0.2.19"}), marked_at={ip: 990.0 for ip in every}))
    assert [type(x) for x in plan.actions] == [UnassignIPs, UnassignIPs]
    # min_eni keeps the ENI: its IPs are unassigned instead
    plan = plan_node(state(enis=(PRIMARY, b), release=rel, acknowledged=rel,
                           config=replace(CFG, min_eni=1)))
    assert plan.actions == [UnassignIPs("eni-a2", tuple(sorted(rel, key=_key)))]
    # pods arriving (a deficit): nothing is detached
    plan = plan_node(state(enis=(PRIMARY, b), release=rel, acknowledged=rel, pending=12))
    assert not [x for x in plan.actions if isinstance(x, DetachENI)]


def _key(ip: str) -> tuple[int, ...]:
    return tuple(int(p) for p in ip.split("."))


def test_withdrawn_ack_stops_release() -> None:
    rel = frozenset(ips("10.0.0", 3))
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8)), release=rel, acknowledged=frozenset()))
    assert not [a for a in plan.actions if isinstance(a, UnassignIPs)]


def test_ip_held_by_pod_never_unassigned_even_if_acked() -> None:
    rel = frozenset({"10.0.0.1"})
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8)), release=rel, acknowledged=rel,
                           allocated=rel))
    assert plan.actions == []
    assert "10.0.0.1" not in plan.release  # a pod holds it: dropped from the list


def test_demand_takes_back_marked_ips_first() -> None:
    rel = frozenset(ips("10.0.0", 3))
    plan = plan_node(state(enis=(PRIMARY, _eni_with(8)), release=rel, pending=7))
    assert plan.actions == []
    assert len(plan.release) == 1  # 5 free + 2 taken back = 7 pending


def test_release_drains_least_used_eni() -> None:
    a = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 9))
    b = ENIView("eni-a2", INUSE, "vsw-aaaa0001", ips("10.0.1", 4))
    held = frozenset(ips("10.0.0", 5))
    plan = plan_node(state(enis=(PRIMARY, a, b), allocated=held))
    assert plan.release == frozenset(ips("10.0.1", 3))


def test_cooling_ips_neither_warm_nor_released() -> None:
    e = _eni_with(8)
    plan = plan_node(state(enis=(PRIMARY, e), cooling=frozenset(ips("10.0.0", 8))))
    assert plan.release == frozenset()
    plan = plan_node(state(enis=(PRIMARY, e), cooling=frozenset(ips("10.0.0", 8)),
                           config=replace(CFG, min_pool_size=2)))
    assert plan.actions == [AssignIPs("eni-a1", 1), CreateENI("vsw-aaaa0001", 1)]


def test_idle_reclaim_in_batches_down_to_min() -> None:
    cfg = replace(CFG, min_pool_size=1, max_pool_size=9, idle_ip_reclaim_after=60,
                  idle_ip_reclaim_interval=30, idle_ip_reclaim_batch_size=3)
    e = _eni_with(8)
    old = {ip: 0.0 for ip in e.ips}
    plan = plan_node(state(config=cfg, enis=(PRIMARY, e), free_since=old))
    assert len(plan.release) == 3 and plan.idle_reclaimed
    plan = plan_node(state(config=cfg, enis=(PRIMARY, e), free_since=old,
                           last_idle_reclaim=990.0))
    assert plan.release == frozenset()  # interval not over
    young = {ip: 990.0 for ip in e.ips}
    assert plan_node(state(config=cfg, enis=(PRIMARY, e), free_since=young)).release == set()
    plan = plan_node(state(config=cfg, enis=(PRIMARY, e), free_since=old,
                           release=frozenset(ips("10.0.0", 6))))
    assert len(plan.release) == 7  # one more, min_pool_size 1 stays


# --- ENI lifecycle -----------------------------------------------------------------------

def test_empty_eni_detached_after_grace_then_deleted() -> None:
    cfg = replace(CFG, empty_eni_reclaim_after=60)
    e = ENIView("eni-a1", INUSE, "vsw-aaaa0001", empty_since=980.0)
    assert plan_node(state(config=cfg, enis=(PRIMARY, e))).actions == []
    e = replace(e, empty_since=900.0)
    assert plan_node(state(config=cfg, enis=(PRIMARY, e))).actions == [DetachENI("eni-a1")]
    assert plan_node(state(config=replace(cfg, min_eni=1), enis=(PRIMARY, e))).actions == []
    gone = replace(e, status=AVAILABLE)
    assert plan_node(state(config=cfg, enis=(PRIMARY, gone))).actions == [DeleteENI("eni-a1")]
    detaching = replace(e, status=DETACHING)
    assert plan_node(state(config=cfg, enis=(PRIMARY, detaching))).actions == []


def test_deleting_resource_hands_off() -> None:
    e = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 3), deleting=True)
    plan = plan_node(state(enis=(PRIMARY, e), config=replace(CFG, min_pool_size=2)))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 2)]


def test_min_eni_creates_empty_enis() -> None:
    plan = plan_node(state(config=replace(CFG, min_eni=2)))
    assert plan.actions == [CreateENI("vsw-aaaa0001", 0), CreateENI("vsw-aaaa0001", 0)]


# --- hot swap ----------------------------------------------------------------------------

def test_no_hot_swap_while_running() -> None:
    plan = plan_node(state(limits=T6, pending=1))
    assert plan.actions == []
    assert plan.conditions[COND_HOTSWAP].status
    avail = ENIView("eni-t1", AVAILABLE, "vsw-aaaa0001")
    assert plan_node(state(limits=T6, pending=1, enis=(PRIMARY, avail))).actions == []
    stopped = plan_node(state(limits=T6, pending=1, instance_running=False))
    assert stopped.actions == [CreateENI("vsw-aaaa0001", 1)]
    assert not stopped.conditions[COND_HOTSWAP].status
    # attached: IPs can be assigned while running
    e = ENIView("eni-t1", INUSE, "vsw-aaaa0001")
    assert plan_node(state(limits=T6, pending=1, enis=(PRIMARY, e))).actions == [
        AssignIPs("eni-t1", 1)]


# --- vSwitches ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,blocked,vswitches,expect", [
    (CFG, {}, VSW, "vsw-aaaa0001"),  # most free
    (CFG, {"vsw-aaaa0001": 2000.0}, VSW, "vsw-bbbb0002"),  # blocked: next one
    (CFG, {"vsw-aaaa0001": 500.0}, VSW, "vsw-aaaa0001"),  # block expired
    (replace(CFG, vswitch_selection_policy="ordered",
             vswitches={"z1": ("vsw-bbbb0002", "vsw-aaaa0001")}), {}, VSW, "vsw-bbbb0002"),
    (CFG, {}, (replace(VSW[0], available_ips=0), VSW[1]), "vsw-bbbb0002"),  # exhausted
    (PoolConfig(), {}, (), "vsw-aaaa0001"),  # none configured: the instance's own
])
def test_vswitch_choice(cfg: PoolConfig, blocked: dict[str, float],
                        vswitches: tuple[VSwitch, ...], expect: str) -> None:
    plan = plan_node(state(config=replace(cfg, min_pool_size=1), blocked_vswitches=blocked,
                           vswitches=vswitches))
    assert plan.actions == [CreateENI(expect, 1)]


def test_all_vswitches_exhausted_raises_condition() -> None:
    plan = plan_node(state(pending=1, blocked_vswitches={"vsw-aaaa0001": 2000.0},
                           vswitches=(VSW[0], replace(VSW[1], available_ips=0))))
    assert plan.actions == []
    assert plan.conditions[COND_VSW].status


def test_blocked_vswitch_eni_not_filled() -> None:
    e = ENIView("eni-a1", INUSE, "vsw-aaaa0001", ips("10.0.0", 1))
    plan = plan_node(state(enis=(PRIMARY, e), config=replace(CFG, min_pool_size=3),
                           blocked_vswitches={"vsw-aaaa0001": 2000.0}))
    assert plan.actions == [CreateENI("vsw-bbbb0002", 2)]  # 1 free already


def test_counts() -> None:
    e = _eni_with(6)
    plan = plan_node(state(enis=(PRIMARY, e), allocated=frozenset({"10.0.0.1"}),
                           release=frozenset({"10.0.0.2"}), pending=1))
    assert plan.counts == {"enis": 1, "total": 6, "free": 4, "allocated": 1,
                           "releasing": 1, "pending": 1}
