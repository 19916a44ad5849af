"""A pod's public-IP annotation, parsed without I/O.

``PUBLIC_IP_ANNOTATION`` on a pod:

- ``"true"``: a new EIP (5 Mbit/s), released when the pod goes;
- a JSON object: ``allocationId`` (an existing EIP, never released by eniway, only
  disassociated), ``bandwidth`` (Mbit/s, 1 to 200, for a new EIP), ``release``
  (``OnDelete``, ``Never``: kept for the next pod of the same namespace/name, as a
  StatefulSet pod comes back; ``After``: kept that long, ``releaseAfter``, then released);
- ``"false"``, empty or absent: no public IP.

Bad input raises ``SpecError`` naming the field; nothing is done for such a pod.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from cni_plugin import contract
from eniway_operator.config import ConfigError, parse_duration
from eniway_operator.eip_plan import AFTER, ON_DELETE, RELEASE_POLICIES, Spec

PUBLIC_IP_ANNOTATION = contract.ANNOTATION_PUBLIC_IP
BANDWIDTH_RANGE = (1, 200)  # PayByTraffic, the metering eniway allocates with
_ALLOCATION_ID = re.compile(r"^eip-[a-z0-9]{1,64}$")
_KEYS = ("allocationId", "bandwidth", "release", "releaseAfter")


class SpecError(ValueError):
    """The annotation is wrong; the message names the field."""


def parse(annotations: Mapping[str, str] | None) -> Spec | None:
    raw = (annotations or {}).get(PUBLIC_IP_ANNOTATION, "").strip()
    if raw in ("", "false"):
        return None
    if raw == "true":
        return Spec()
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}: expected \"true\", \"false\" or a JSON "
                        f"object, got {raw[:80]!r}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}: expected a JSON object, got {raw[:80]!r}")
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}: unknown field(s) {', '.join(unknown)} "
                        f"(known: {', '.join(_KEYS)})")
    allocation_id = doc.get("allocationId", "")
    if allocation_id and (not isinstance(allocation_id, str)
                          or not _ALLOCATION_ID.match(allocation_id)):
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}.allocationId: expected an EIP id like "
                        f"eip-..., got {allocation_id!r}")
    bandwidth = doc.get("bandwidth", 5)
    lo, hi = BANDWIDTH_RANGE
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or \
            not lo <= bandwidth <= hi:
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}.bandwidth: expected {lo} to {hi} (Mbit/s), "
                        f"got {bandwidth!r}")
    release = doc.get("release", ON_DELETE)
    if release not in RELEASE_POLICIES:
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}.release: expected one of "
                        f"{', '.join(RELEASE_POLICIES)}, got {release!r}")
    after = 0.0
    if release == AFTER:
        if "releaseAfter" not in doc:
            raise SpecError(f"{PUBLIC_IP_ANNOTATION}.releaseAfter: required with "
                            "release After (a duration like 30m)")
        try:
            after = parse_duration(doc["releaseAfter"], f"{PUBLIC_IP_ANNOTATION}.releaseAfter")
        except ConfigError as e:
            raise SpecError(str(e)) from None
        if after <= 0:
            raise SpecError(f"{PUBLIC_IP_ANNOTATION}.releaseAfter: must be above 0")
    elif "releaseAfter" in doc:
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}.releaseAfter: only with release After")
    if allocation_id and ("bandwidth" in doc or "release" in doc):
        raise SpecError(f"{PUBLIC_IP_ANNOTATION}: bandwidth and release apply to a new EIP, "
                        "not to one named by allocationId")
    return Spec(allocation_id=allocation_id, bandwidth=bandwidth, release=release,
                release_after=after)
