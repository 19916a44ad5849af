"""Public-IP planning (eip_plan) and the pod annotation (eip_spec), by tables."""

from __future__ import annotations

from typing import Any

import pytest

from eniway_operator.cloud.base import PublicIp
from eniway_operator.eip_plan import (
    AFTER,
    NEVER,
    REASON_CLAIMED,
    REASON_NOT_FOUND,
    TAG_POD,
    TAG_RELEASE,
    Allocate,
    Associate,
    Release,
    Spec,
    Unassociate,
    Want,
    plan,
)
from eniway_operator.eip_spec import PUBLIC_IP_ANNOTATION, SpecError, parse

OWNED = {"eniway.io/creator": "eniway", "eniway.io/cluster": "c1"}
ENI = "eni-a"


def eip(aid: str, status: str = "Available", ip: str = "", pod: str = "",
        release: str = "OnDelete", owned: bool = True, eni: str = ENI) -> PublicIp:
    tags = {**OWNED, TAG_POD: pod, TAG_RELEASE: release} if owned else {}
    return PublicIp(allocation_id=aid, ip=f"198.51.100.{len(aid)}", status=status,
                    eni_id=eni if ip else "", private_ip=ip, tags=tags)


def want(key: str, ip: str = "", **spec: Any) -> Want:
    return Want(key=key, spec=Spec(**spec), ip=ip, eni_id=ENI if ip else "")


CASES: list[tuple[str, list[Want], list[PublicIp], list[Any], set[str]]] = [
    ("no IP yet: nothing allocated", [want("ns/a")], [], [], set()),
    ("IP known, no EIP: allocate tagged for the pod", [want("ns/a", "10.0.0.5")], [],
     [Allocate("ns/a", 5, {**OWNED, TAG_POD: "ns/a", TAG_RELEASE: "OnDelete"})], set()),
    ("its EIP Available: associate with its IP", [want("ns/a", "10.0.0.5")],
     [eip("eip-1", pod="ns/a")], [Associate("ns/a", "eip-1", ENI, "10.0.0.5")],
     {"10.0.0.5"}),
    ("InUse on its IP: nothing to do", [want("ns/a", "10.0.0.5")],
     [eip("eip-1", "InUse", "10.0.0.5", pod="ns/a")], [], {"10.0.0.5"}),
    ("in transit: wait, the IP held", [want("ns/a", "10.0.0.5")],
     [eip("eip-1", "Associating", "10.0.0.5", pod="ns/a")], [], {"10.0.0.5"}),
    ("the pod came back with another IP: disassociate first", [want("ns/a", "10.0.0.9")],
     [eip("eip-1", "InUse", "10.0.0.5", pod="ns/a")],
     [Unassociate("eip-1", ENI, "10.0.0.5", "ns/a")], {"10.0.0.5"}),
    ("pod gone, EIP in use: disassociate at once", [],
     [eip("eip-1", "InUse", "10.0.0.5", pod="ns/a")],
     [Unassociate("eip-1", ENI, "10.0.0.5")], {"10.0.0.5"}),
    ("pod gone, OnDelete: release", [], [eip("eip-1", pod="ns/a")],
     [Release("eip-1", "198.51.100.5", "ns/a")], set()),
    ("pod gone, Never: kept", [], [eip("eip-1", pod="ns/a", release=NEVER)], [], set()),
    ("unreadable policy tag: kept", [], [eip("eip-1", pod="ns/a", release="After:soon")],
     [], set()),
    ("a StatefulSet pod back under its name finds its EIP", [want("ns/web-0", "10.0.0.7",
                                                                  release=NEVER)],
     [eip("eip-1", pod="ns/web-0", release=NEVER)],
     [Associate("ns/web-0", "eip-1", ENI, "10.0.0.7")], {"10.0.0.7"}),
    ("a named EIP: associated, never allocated", [want("ns/a", "10.0.0.5",
                                                       allocation_id="eip-user")],
     [eip("eip-user", owned=False)], [Associate("ns/a", "eip-user", ENI, "10.0.0.5")],
     {"10.0.0.5"}),
    ("a named EIP whose pod is gone: disassociated, not released", [],
     [eip("eip-user", "InUse", "10.0.0.5", owned=False)],
     [Unassociate("eip-user", ENI, "10.0.0.5")], {"10.0.0.5"}),
    ("a named EIP given back and Available: left alone", [],
     [eip("eip-user", owned=False)], [], set()),
    ("another cluster's EIP is not ours to release", [],
     [PublicIp("eip-x", "198.51.100.9", "Available",
               tags={"eniway.io/creator": "eniway", "eniway.io/cluster": "c2",
                     TAG_POD: "ns/a", TAG_RELEASE: "OnDelete"})], [], set()),
    ("two EIPs for one pod: the one on its IP stays, the other goes",
     [want("ns/a", "10.0.0.5")],
     [eip("eip-1", pod="ns/a"), eip("eip-2", "InUse", "10.0.0.5", pod="ns/a")],
     [Release("eip-1", "198.51.100.5", "ns/a")], {"10.0.0.5"}),
]


@pytest.mark.parametrize(("wants", "eips", "actions", "held"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan(wants: list[Want], eips: list[PublicIp], actions: list[Any],
              held: set[str]) -> None:
    got = plan(wants, eips, OWNED, now=100.0)
    assert got.actions == actions
    assert got.held_ips == held


def test_ready_reports_the_eip_on_the_pods_ip() -> None:
    e = eip("eip-1", "InUse", "10.0.0.5", pod="ns/a")
    got = plan([want("ns/a", "10.0.0.5")], [e], OWNED, now=0.0)
    assert got.ready == {"ns/a": e}


def test_release_after_waits_from_when_it_was_first_seen_unclaimed() -> None:
    e = eip("eip-1", pod="ns/a", release=f"{AFTER}:60")
    first = plan([], [e], OWNED, now=1000.0)
    assert first.actions == [] and first.unclaimed_since == {"eip-1": 1000.0}
    early = plan([], [e], OWNED, now=1059.0, unclaimed_since=first.unclaimed_since)
    assert early.actions == []
    late = plan([], [e], OWNED, now=1060.0, unclaimed_since=early.unclaimed_since)
    assert late.actions == [Release("eip-1", e.ip, "ns/a")]
    back = plan([want("ns/a", "10.0.0.5")], [e], OWNED, now=1030.0,
                unclaimed_since=first.unclaimed_since)
    assert back.unclaimed_since == {}, "claimed again: the clock is dropped"


def test_problems_missing_and_doubly_claimed_named_eips() -> None:
    got = plan([want("ns/a", "10.0.0.5", allocation_id="eip-user"),
                want("ns/b", "10.0.0.6", allocation_id="eip-user"),
                want("ns/c", "10.0.0.7", allocation_id="eip-gone")],
               [eip("eip-user", owned=False)], OWNED, now=0.0)
    assert got.actions == [Associate("ns/a", "eip-user", ENI, "10.0.0.5")]
    assert got.problems["ns/b"][0] == REASON_CLAIMED
    assert got.problems["ns/c"][0] == REASON_NOT_FOUND


SPECS: list[tuple[str | None, Spec | None]] = [
    (None, None), ("", None), ("false", None), ("true", Spec()),
    ('{"bandwidth": 20}', Spec(bandwidth=20)),
    ('{"release": "Never"}', Spec(release=NEVER)),
    ('{"release": "After", "releaseAfter": "30m"}', Spec(release=AFTER, release_after=1800)),
    ('{"allocationId": "eip-abc123"}', Spec(allocation_id="eip-abc123")),
]


@pytest.mark.parametrize(("raw", "spec"), SPECS)
def test_annotation_parses(raw: str | None, spec: Spec | None) -> None:
    assert parse({} if raw is None else {PUBLIC_IP_ANNOTATION: raw}) == spec


BAD = [
    ("yes", "JSON object"), ("[1]", "JSON object"), ('{"bandwith": 5}', "bandwith"),
    ('{"bandwidth": 0}', "bandwidth"), ('{"bandwidth": 201}', "bandwidth"),
    ('{"bandwidth": true}', "bandwidth"), ('{"release": "Later"}', "release"),
    ('{"release": "After"}', "releaseAfter"), ('{"releaseAfter": "5m"}', "releaseAfter"),
    ('{"release": "After", "releaseAfter": "0s"}', "releaseAfter"),
    ('{"release": "After", "releaseAfter": "soon"}', "releaseAfter"),
    ('{"allocationId": "i-123"}', "allocationId"),
    ('{"allocationId": "eip-abc", "bandwidth": 5}', "allocationId"),
]


@pytest.mark.parametrize(("raw", "field"), BAD)
def test_bad_annotation_names_the_field(raw: str, field: str) -> None:
    with pytest.raises(SpecError) as ei:
        parse({PUBLIC_IP_ANNOTATION: raw})
    assert field in str(ei.value)
