"""Exclusive-ENI planning, table-driven: slots, create/reuse/attach, moves, release."""

from __future__ import annotations

from dataclasses import replace

import pytest

from eniway_operator.cloud.base import InstanceLimits, VSwitch
from eniway_operator.config import PoolConfig
from eniway_operator.exclusive_plan import (
    ATTACHING,
    AVAILABLE,
    CREATING,
    DETACHING,
    ENI,
    FIXED,
    INUSE,
    REASON_HOTSWAP,
    REASON_NO_SLOT,
    REASON_NO_VSWITCH,
    REASON_ZONE,
    Attach,
    Create,
    Delete,
    Detach,
    Node,
    PodClaim,
    Settings,
    State,
    node_capacity,
    plan_exclusive,
    reserved_slots,
)
from eniway_operator.plan import ATTACHING as SHARED_ATTACHING
from eniway_operator.plan import INUSE as SHARED_INUSE
from eniway_operator.plan import CreateENI, ENIView, NodeState, plan_node

G6 = InstanceLimits("ecs.g6.2xlarge", max_enis=4, ips_per_eni=10)  # 3 secondary slots
T6 = InstanceLimits("ecs.t6-c1m1.large", max_enis=2, ips_per_eni=2, hot_swap=False)
VSW = (VSwitch("vsw-aaaa0001", "vpc-1", "z1", "10.0.0.0/24", 200),
       VSwitch("vsw-bbbb0002", "vpc-1", "z1", "10.0.1.0/24", 50),
       VSwitch("vsw-cccc0003", "vpc-1", "z2", "10.0.2.0/24", 250),
       VSwitch("vsw-dddd0004", "vpc-1", "z1", "10.0.3.0/24", 0))
A = Node("a", "i-a", "z1", G6, split=2, vswitches=VSW, default_vswitches=("vsw-bbbb0002",),
         default_security_groups=("sg-node0001",))
B = replace(A, name="b", instance_id="i-b")
C = replace(A, name="c", instance_id="i-c", zone_id="z2", default_vswitches=("vsw-cccc0003",))
NODES = {"a": A, "b": B, "c": C}
POLICY = Settings(("vsw-aaaa0001", "vsw-bbbb0002", "vsw-cccc0003"),
                  ("sg-web00001", "sg-app00001"))
FIXED_POLICY = replace(POLICY, ip_type=FIXED, release_after=600.0)


def pod(name: str, node: str = "a", uid: str = "", **kw: object) -> PodClaim:
    return PodClaim("default", name, uid or f"uid-{name}", node, **kw)  # type: ignore[arg-type]


def eni(eni_id: str, status: str, claim: str = "", instance: str = "", zone: str = "z1",
        **kw: object) -> ENI:
    return ENI(eni_id, status, zone, "vsw-aaaa0001", ("sg-app00001", "sg-web00001"),
               instance_id=instance, claim=claim, **kw)  # type: ignore[arg-type]


def plan(claims: tuple[PodClaim, ...] = (), enis: tuple[ENI, ...] = (), now: float = 1000.0,
         nodes: dict[str, Node] | None = None):  # type: ignore[no-untyped-def]
    return plan_exclusive(State(now, nodes or NODES, claims, enis))


# --- slots -------------------------------------------------------------------------------

@pytest.mark.parametrize("node,slots,reason", [
    (A, 2, ""),  # the split
    (replace(A, split=5), 3, ""),  # at most ENIs - 1
    (replace(A, split=5, shared_enis=2), 1, ""),  # less what the shared pool holds
    (replace(A, split=2, shared_enis=3), 0, ""),
    (replace(A, split=0), 0, ""),  # off by default
    (replace(A, limits=T6, split=1), 0, REASON_HOTSWAP),  # cannot hot-plug while running
    (replace(A, limits=T6, split=1, instance_running=False), 1, ""),
])
def test_node_capacity(node: Node, slots: int, reason: str) -> None:
    cap = node_capacity(node)
    assert (cap.slots, cap.reason) == (slots, reason)
    if reason:
        assert node.limits.instance_type in cap.message


def test_hot_swap_node_reports_why_and_gets_no_eni() -> None:
    t6 = replace(A, name="t", instance_id="i-t", limits=T6, split=1)
    p = plan((pod("x", "t", settings=POLICY),), nodes={"t": t6})
    assert p.capacity["t"].reason == REASON_HOTSWAP
    assert p.actions == []
    assert [pr.reason for pr in p.problems] == [REASON_NO_SLOT]
    assert "cannot attach ENIs while running" in p.problems[0].message


def test_reserved_slots_keep_the_shared_pool_out() -> None:
    assert reserved_slots(2, 0) == 2
    assert reserved_slots(1, 3) == 3  # split lowered while three are attached
    cfg = PoolConfig(min_pool_size=40)  # wants more than one ENI's worth
    primary = ENIView("eni-p", SHARED_INUSE, "vsw-aaaa0001", primary=True)
    free = plan_node(NodeState(G6, cfg, 0.0, "z1", enis=(primary,), warmed_up=True,
                               default_vswitch="vsw-aaaa0001"))
    assert len([a for a in free.actions if isinstance(a, CreateENI)]) == 3
    held = plan_node(NodeState(G6, cfg, 0.0, "z1", enis=(primary,), warmed_up=True,
                               default_vswitch="vsw-aaaa0001", reserved_slots=2))
    assert len([a for a in held.actions if isinstance(a, CreateENI)]) == 1
    full = plan_node(NodeState(
        G6, cfg, 0.0, "z1", warmed_up=True, default_vswitch="vsw-aaaa0001", reserved_slots=2,
        enis=(primary, ENIView("eni-s", SHARED_ATTACHING, "vsw-aaaa0001"))))
    assert not [a for a in full.actions if isinstance(a, CreateENI)]
    assert full.conditions["LimitReached"].status


def test_plan_reports_reserved_per_node() -> None:
    p = plan(enis=(eni("eni-1", INUSE, "uid-x", "i-a"), eni("eni-2", INUSE, "uid-y", "i-a"),
                   eni("eni-3", INUSE, "uid-z", "i-a")),
             claims=(pod("x", settings=POLICY), pod("y", settings=POLICY),
                     pod("z", settings=POLICY)))
    assert p.reserved == {"a": 3, "b": 2, "c": 2}


# --- a new pod ---------------------------------------------------------------------------

def test_new_pod_gets_an_eni_with_its_policy() -> None:
    p = plan((pod("x", settings=POLICY),))
    assert p.actions == [Create("uid-x", "default/x", "a", "vsw-aaaa0001",
                                ("sg-app00001", "sg-web00001"), False, 0.0)]


def test_new_pod_without_policy_settings_uses_the_nodes() -> None:
    p = plan((pod("x"),))
    assert p.actions == [Create("uid-x", "default/x", "a", "vsw-bbbb0002", ("sg-node0001",),
                                False, 0.0)]


def test_vswitch_of_the_pods_zone_only() -> None:
    p = plan((pod("x", "c", settings=POLICY),))
    assert [a.vswitch_id for a in p.actions if isinstance(a, Create)] == ["vsw-cccc0003"]
    only_z2 = replace(POLICY, vswitch_ids=("vsw-cccc0003",))
    p = plan((pod("y", "a", settings=only_z2),))
    assert p.actions == [] and [pr.reason for pr in p.problems] == [REASON_NO_VSWITCH]
    exhausted = replace(POLICY, vswitch_ids=("vsw-dddd0004",))
    assert [pr.reason for pr in plan((pod("z", settings=exhausted),)).problems] == [
        REASON_NO_VSWITCH]


def test_created_eni_is_attached_then_ready() -> None:
    created = eni("eni-1", AVAILABLE, "uid-x")
    p = plan((pod("x", settings=POLICY),), (created,))
    assert p.actions == [Attach("eni-1", "i-a", "a", "uid-x", "default/x")]
    for busy in (CREATING, ATTACHING):
        assert plan((pod("x", settings=POLICY),), (replace(created, status=busy),)).actions == []
    p = plan((pod("x", settings=POLICY),), (replace(created, status=INUSE, instance_id="i-a"),))
    assert p.actions == [] and p.ready == {"uid-x": "eni-1"}


def test_slots_bound_creates_and_attaches() -> None:
    three = (pod("x", settings=POLICY), pod("y", settings=POLICY), pod("z", settings=POLICY))
    p = plan(three)
    assert len([a for a in p.actions if isinstance(a, Create)]) == 2  # split 2
    assert [pr.pod for pr in p.problems if pr.reason == REASON_NO_SLOT] == ["default/z"]
    p = plan(three, (eni("eni-1", AVAILABLE, "uid-x"), eni("eni-2", AVAILABLE, "uid-y"),
                     eni("eni-3", AVAILABLE, "uid-z")))
    assert [a.eni_id for a in p.actions if isinstance(a, Attach)] == ["eni-1", "eni-2"]
    # a detaching ENI still holds its device slot
    p = plan((pod("x", settings=POLICY),),
             (eni("eni-1", AVAILABLE, "uid-x"), eni("eni-9", DETACHING, "", "i-a"),
              eni("eni-8", INUSE, "uid-q", "i-a")))
    assert not [a for a in p.actions if isinstance(a, Attach)]
    # and so do the shared pool's ENIs
    busy = replace(A, shared_enis=2)
    p = plan((pod("x", settings=POLICY),), (eni("eni-1", AVAILABLE, "uid-x"),
                                            eni("eni-8", INUSE, "uid-q", "i-a")),
             nodes={"a": busy})
    assert not [a for a in p.actions if isinstance(a, Attach)]


# --- release, reuse ----------------------------------------------------------------------

def test_elastic_eni_of_a_gone_pod_is_detached_then_deleted() -> None:
    p = plan((), (eni("eni-1", INUSE, "uid-x", "i-a"),))
    assert p.actions == [Detach("eni-1", "i-a")]
    assert p.released == {"eni-1": "uid-x"}
    assert plan((), (eni("eni-1", AVAILABLE, "uid-x"),)).actions == [Delete("eni-1")]
    assert plan((), (eni("eni-1", DETACHING, "uid-x", "i-a"),)).actions == []


def test_terminating_pod_keeps_its_eni() -> None:
    p = plan((pod("x", terminating=True, settings=POLICY),), (eni("eni-1", INUSE, "uid-x", "i-a"),))
    assert p.actions == []
    p = plan((pod("x", terminating=True, settings=POLICY),))
    assert p.actions == [] and p.problems == []


def test_released_elastic_eni_is_reused_by_a_matching_pod() -> None:
    gone = eni("eni-1", AVAILABLE, "uid-old")
    p = plan((pod("y", settings=POLICY),), (gone,))
    assert p.actions == [Attach("eni-1", "i-a", "a", "uid-y", "default/y")]
    other_sgs = replace(POLICY, security_group_ids=("sg-other001",))
    p = plan((pod("y", settings=other_sgs),), (gone,))
    assert sorted(type(a).__name__ for a in p.actions) == ["Create", "Delete"]
    p = plan((pod("y", "c", settings=POLICY),), (gone,))  # another zone
    assert sorted(type(a).__name__ for a in p.actions) == ["Create", "Delete"]


# --- fixed IPs ---------------------------------------------------------------------------

def test_fixed_claim_is_the_pods_name() -> None:
    assert pod("web-0", stateful=True).key == "default/web-0"
    assert pod("x", settings=FIXED_POLICY).key == "default/x"
    assert pod("x", settings=POLICY).key == "uid-x"
    p = plan((pod("web-0", stateful=True, settings=POLICY),))
    assert p.actions == [Create("default/web-0", "default/web-0", "a", "vsw-aaaa0001",
                                ("sg-app00001", "sg-web00001"), True, 0.0)]
    p = plan((pod("x", settings=FIXED_POLICY),))
    assert [a.release_after for a in p.actions if isinstance(a, Create)] == [600.0]


def test_fixed_eni_moves_to_the_new_node() -> None:
    kept = eni("eni-1", INUSE, "default/web-0", "i-a", fixed=True, release_after=60.0)
    new = pod("web-0", "b", uid="uid-2", stateful=True)
    assert plan((new,), (kept,)).actions == [Detach("eni-1", "i-a")]
    # the old pod still holds the link on node a: wait for it
    old = pod("web-0", "a", uid="uid-1", stateful=True, terminating=True)
    assert plan((old, new), (kept,)).actions == []
    assert plan((new,), (replace(kept, status=DETACHING),)).actions == []
    moved = replace(kept, status=AVAILABLE, instance_id="")
    assert plan((new,), (moved,)).actions == [
        Attach("eni-1", "i-b", "b", "default/web-0", "default/web-0")]


def test_fixed_eni_in_another_zone_is_never_replaced() -> None:
    kept = eni("eni-1", AVAILABLE, "default/web-0", fixed=True)
    p = plan((pod("web-0", "c", stateful=True),), (kept,))
    assert p.actions == []
    assert [(pr.pod, pr.reason) for pr in p.problems] == [("default/web-0", REASON_ZONE)]
    assert "z1" in p.problems[0].message and "z2" in p.problems[0].message


def test_unclaimed_fixed_eni_waits_release_after_then_goes() -> None:
    kept = eni("eni-1", INUSE, "default/web-0", "i-a", fixed=True, release_after=600.0)
    assert plan((), (kept,)).actions == [Detach("eni-1", "i-a")]
    assert plan((), (kept,)).released == {}  # a fixed ENI keeps its claim
    avail = replace(kept, status=AVAILABLE, instance_id="")
    p = plan((), (avail,), now=1000.0)
    assert p.actions == [] and p.unclaimed_since == {"eni-1": 1000.0}
    since = replace(avail, unclaimed_since=1000.0)
    assert plan((), (since,), now=1599.0).actions == []
    assert plan((), (since,), now=1600.0).actions == [Delete("eni-1")]
    # claimed again in time: the clock stops and it is attached
    p = plan((pod("web-0", "b", stateful=True),), (since,), now=1500.0)
    assert p.unclaimed_since == {"eni-1": None}
    assert [type(a).__name__ for a in p.actions] == ["Attach"]


def test_fixed_eni_is_not_reused_by_another_pod() -> None:
    kept = eni("eni-1", AVAILABLE, "default/web-0", fixed=True, unclaimed_since=990.0,
               release_after=600.0)
    p = plan((pod("y", settings=POLICY),), (kept,))
    assert [type(a).__name__ for a in p.actions] == ["Create"]


def test_deleting_enis_are_left_alone() -> None:
    assert plan((), (eni("eni-1", INUSE, "uid-x", "i-a", deleting=True),)).actions == []


def test_plan_is_idempotent() -> None:
    claims = (pod("x", settings=POLICY), pod("web-0", "b", stateful=True))
    enis = (eni("eni-1", AVAILABLE, "uid-x"), eni("eni-2", INUSE, "uid-gone", "i-b"))
    assert plan(claims, enis) == plan(tuple(reversed(claims)), tuple(reversed(enis)))
