"""Public-IP planning: a pure function from the pods that ask for a public IP, their
private IPs and the EIPs the cloud reports to the calls that give each pod its EIP in
NAT mode (one EIP per private IP of a secondary ENI), and take it back when the pod goes.

No I/O and no clock reads: the caller passes ``now`` and the time each EIP was first seen
unclaimed (kept in memory: after a restart the clock starts again, so an EIP is kept
longer, never shorter).

Rules decided here (each one table-tested):

- A pod's EIP is the one it names (``allocation_id``), else the one eniway allocated for
  it: tagged with the cluster and the pod's ``namespace/name`` (so a StatefulSet pod that
  comes back under its name finds its EIP again).
- A pod gets an EIP only once it has its private IP; the EIP is associated with exactly
  that IP on that ENI. An EIP mapped elsewhere (the pod came back with another IP) is
  disassociated first. Nothing is done to an EIP while it is Associating or
  Unassociating: the next round sees the cloud's answer.
- An EIP no live pod claims is disassociated at once (its private IP may go to another
  pod). Then, for the EIPs eniway allocated, the pod's release policy applies: ``OnDelete``
  releases it, ``Never`` keeps it for a pod of the same name, ``After`` keeps it that many
  seconds and then releases it. An EIP the pod named is never released (eniway did not
  create it), only disassociated.
- Two pods naming the same EIP: the first by ``namespace/name`` gets it, the other a
  problem. A named EIP the cloud does not know is a problem too.
- ``held_ips``: the private IPs that carry an EIP (or are being associated / disassociated).
  The release handshake never gives such an IP back to the cloud.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eniway_operator.cloud.base import PublicIp

AVAILABLE = "Available"
ASSOCIATING = "Associating"
INUSE = "InUse"
UNASSOCIATING = "Unassociating"

ON_DELETE = "OnDelete"
NEVER = "Never"
AFTER = "After"
RELEASE_POLICIES = (ON_DELETE, NEVER, AFTER)

TAG_POD = "eniway.io/pod"  # namespace/name of the pod the EIP was allocated for
TAG_RELEASE = "eniway.io/eip-release"  # OnDelete | Never | After:<seconds>

REASON_NOT_FOUND = "PublicIPNotFound"
REASON_CLAIMED = "PublicIPClaimed"


@dataclass(frozen=True)
class Spec:
    """What a pod asks for (its annotation, parsed by eip_spec)."""

    allocation_id: str = ""  # an existing EIP; empty: eniway allocates one
    bandwidth: int = 5  # Mbit/s, for a new EIP
    release: str = ON_DELETE
    release_after: float = 0.0  # seconds, with AFTER


@dataclass(frozen=True)
class Want:
    """One pod asking for a public IP; ``ip``/``eni_id`` empty until it has its IP."""

    key: str  # namespace/name
    spec: Spec
    ip: str = ""
    eni_id: str = ""


@dataclass(frozen=True)
class Allocate:
    key: str
    bandwidth: int
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Associate:
    key: str
    allocation_id: str
    eni_id: str
    ip: str


@dataclass(frozen=True)
class Unassociate:
    allocation_id: str
    eni_id: str
    ip: str
    key: str = ""  # the pod it is taken from, when one still wants it


@dataclass(frozen=True)
class Release:
    allocation_id: str
    ip: str
    key: str  # the pod it was allocated for


Action = Allocate | Associate | Unassociate | Release


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    # namespace/name -> the EIP's address, once InUse on the pod's IP
    ready: dict[str, PublicIp] = field(default_factory=dict)
    # namespace/name -> (reason, message)
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)
    held_ips: set[str] = field(default_factory=set)
    # allocation id -> when first seen unclaimed (the caller keeps it for the next round)
    unclaimed_since: dict[str, float] = field(default_factory=dict)


def release_tag(spec: Spec) -> str:
    if spec.release == AFTER:
        return f"{AFTER}:{int(spec.release_after)}"
    return spec.release


def parse_release_tag(value: str) -> tuple[str, float]:
    """(policy, seconds); anything unreadable is kept (``Never``): never release on a
    guess."""
    policy, _, seconds = value.partition(":")
    if policy == ON_DELETE:
        return ON_DELETE, 0.0
    if policy == AFTER and seconds.isdigit():
        return AFTER, float(seconds)
    return NEVER, 0.0


def eip_tags(base: Mapping[str, str], want: Want) -> dict[str, str]:
    return {**base, TAG_POD: want.key, TAG_RELEASE: release_tag(want.spec)}


def plan(wants: Sequence[Want], eips: Sequence[PublicIp], owned_tags: Mapping[str, str],
         now: float, unclaimed_since: Mapping[str, float] | None = None) -> Plan:
    """``eips``: those carrying ``owned_tags`` (eniway's) plus those pods name or named
    (so that one whose pod is gone is disassociated). ``owned_tags``: the tags every EIP
    eniway allocates carries (creator, cluster)."""
    out = Plan()
    by_id = {e.allocation_id: e for e in eips}

    def owned(e: PublicIp) -> bool:
        return all(e.tags.get(k) == v for k, v in owned_tags.items())

    claimed: dict[str, str] = {}  # allocation id -> pod key
    for want in sorted(wants, key=lambda w: w.key):
        eip: PublicIp | None = None
        if want.spec.allocation_id:
            eip = by_id.get(want.spec.allocation_id)
            if eip is None:
                out.problems[want.key] = (REASON_NOT_FOUND, f"EIP {want.spec.allocation_id} "
                                          "does not exist in the region")
                continue
            if eip.allocation_id in claimed:
                out.problems[want.key] = (REASON_CLAIMED, f"EIP {eip.allocation_id} is "
                                          f"already {claimed[eip.allocation_id]}'s")
                continue
        else:
            mine = [e for e in eips if owned(e) and e.tags.get(TAG_POD) == want.key
                    and e.allocation_id not in claimed]
            # prefer the one already on the pod's IP, then any in use, then the oldest id
            mine.sort(key=lambda e: (not (e.private_ip == want.ip and want.ip),
                                     e.status != INUSE, e.allocation_id))
            eip = mine[0] if mine else None
        if eip is None:
            if want.ip:
                out.actions.append(Allocate(want.key, want.spec.bandwidth,
                                            eip_tags(owned_tags, want)))
            continue
        claimed[eip.allocation_id] = want.key
        if eip.status in (ASSOCIATING, UNASSOCIATING):
            if eip.private_ip:
                out.held_ips.add(eip.private_ip)
            continue
        on_pod = bool(want.ip) and eip.eni_id == want.eni_id and eip.private_ip == want.ip
        if eip.status == INUSE:
            out.held_ips.add(eip.private_ip)
            if on_pod:
                out.ready[want.key] = eip
            else:
                out.actions.append(Unassociate(eip.allocation_id, eip.eni_id,
                                               eip.private_ip, want.key))
            continue
        if want.ip:  # Available
            out.held_ips.add(want.ip)
            out.actions.append(Associate(want.key, eip.allocation_id, want.eni_id, want.ip))

    since = dict(unclaimed_since or {})
    for e in sorted(eips, key=lambda e: e.allocation_id):
        if e.allocation_id in claimed:
            continue
        if e.status in (ASSOCIATING, UNASSOCIATING):
            if e.private_ip:
                out.held_ips.add(e.private_ip)
            continue
        if e.status == INUSE:
            out.held_ips.add(e.private_ip)
            out.actions.append(Unassociate(e.allocation_id, e.eni_id, e.private_ip))
            continue
        if not owned(e):
            continue  # a named EIP, given back: not eniway's to release
        first = since.get(e.allocation_id, now)
        out.unclaimed_since[e.allocation_id] = first
        policy, seconds = parse_release_tag(e.tags.get(TAG_RELEASE, ""))
        if policy == ON_DELETE or (policy == AFTER and now - first >= seconds):
            out.actions.append(Release(e.allocation_id, e.ip, e.tags.get(TAG_POD, "")))
    return out
