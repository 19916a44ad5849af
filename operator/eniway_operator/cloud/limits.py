"""Instance-type limits: the cloud's answer (DescribeInstanceTypes), cached, with the
bundled table as the fallback and a user override on top."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from .base import InstanceLimits

DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "aliyun_instance_types.tsv"


@dataclass(frozen=True)
class InstanceTypeRow:
    """One row of the bundled table (real figures, with where each came from)."""

    instance_type: str
    family: str
    vcpu: int
    memory_gib: float
    eni_quantity: int
    eni_private_ip_quantity: int
    eni_ipv6_quantity: int
    eni_total_quantity: int | None
    hot_swap: bool
    source: str

    def limits(self, source: str = "table") -> InstanceLimits:
        return InstanceLimits(self.instance_type, self.eni_quantity,
                              self.eni_private_ip_quantity, self.hot_swap, source)


def parse_table(lines: Iterable[str]) -> dict[str, InstanceTypeRow]:
    rows: dict[str, InstanceTypeRow] = {}
    for rec in csv.DictReader(lines, delimiter="\t"):
        total = (rec.get("eni_total_quantity") or "").strip()
        rows[rec["instance_type"]] = InstanceTypeRow(
            instance_type=rec["instance_type"],
            family=rec["family"],
            vcpu=int(rec["vcpu"]),
            memory_gib=float(rec["memory_gib"]),
            eni_quantity=int(rec["eni_quantity"]),
            eni_private_ip_quantity=int(rec["eni_private_ip_quantity"]),
            eni_ipv6_quantity=int(rec["eni_ipv6_quantity"] or 0),
            eni_total_quantity=int(total) if total else None,
            hot_swap=rec["hot_swap"].strip().lower() in ("yes", "true", "1"),
            source=rec.get("source", ""),
        )
    return rows


@cache
def bundled_table(path: Path = DATA_FILE) -> Mapping[str, InstanceTypeRow]:
    with open(path, encoding="utf-8", newline="") as f:
        return parse_table(f)


def family_of(instance_type: str) -> str:
    """``ecs.t6-c1m1.large`` -> ``ecs.t6``; ``ecs.g7.xlarge`` -> ``ecs.g7``."""
    parts = instance_type.split(".")
    if len(parts) < 2:
        return instance_type
    return f"{parts[0]}.{parts[1].split('-')[0]}"


def family_hot_swap(instance_type: str, table: Mapping[str, InstanceTypeRow]) -> bool:
    """DescribeInstanceTypes does not say whether a type hot-swaps ENIs: take it from the
    table, by type or else by family (a family is hot-swap unless the table says not)."""
    row = table.get(instance_type)
    if row is not None:
        return row.hot_swap
    family = family_of(instance_type)
    fam = [r for r in table.values() if r.family == family]
    return all(r.hot_swap for r in fam) if fam else True


def parse_override(spec: Mapping[str, object]) -> dict[str, InstanceLimits]:
    """``{"ecs.g6.large": {"enis": 3, "ipsPerENI": 10, "hotSwap": true}}``."""
    out: dict[str, InstanceLimits] = {}
    for itype, v in spec.items():
        if isinstance(v, InstanceLimits):
            out[itype] = replace(v, source="override")
            continue
        if not isinstance(v, Mapping):
            raise ValueError(f"limits override for {itype}: want a mapping, got {v!r}")
        enis = int(v.get("enis", v.get("max_enis", 0)))
        ips = int(v.get("ipsPerENI", v.get("ips_per_eni", 0)))
        if enis < 1 or ips < 1:
            raise ValueError(f"limits override for {itype}: enis and ipsPerENI must be >= 1")
        hot = bool(v.get("hotSwap", v.get("hot_swap", True)))
        out[itype] = InstanceLimits(itype, enis, ips, hot, "override")
    return out


Fetch = Callable[[str], InstanceLimits | None]


class LimitsCache:
    """override > cached API answer (``ttl`` seconds) > API > bundled table.

    ``fetch`` asks the cloud and returns None when the type is unknown there; an
    exception from it (cloud down) falls back on the table without caching."""

    def __init__(self, fetch: Fetch, override: Mapping[str, object] | None = None,
                 ttl: float = 3600.0, table: Mapping[str, InstanceTypeRow] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._override = parse_override(override or {})
        self._ttl = ttl
        self._table = table if table is not None else bundled_table()
        self._clock = clock
        self._cache: dict[str, tuple[float, InstanceLimits]] = {}
        self._lock = threading.Lock()

    def put(self, limits: InstanceLimits) -> None:
        with self._lock:
            self._cache[limits.instance_type] = (self._clock(), limits)

    def get(self, instance_type: str) -> InstanceLimits:
        if instance_type in self._override:
            return self._override[instance_type]
        with self._lock:
            hit = self._cache.get(instance_type)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return hit[1]
        try:
            fetched = self._fetch(instance_type)
        except Exception:
            fetched = None
            if hit is not None:
                return hit[1]  # stale beats the table: it came from the cloud
        if fetched is not None:
            self.put(fetched)
            return fetched
        row = self._table.get(instance_type)
        if row is None:
            from .base import NotFound

            raise NotFound("InvalidInstanceType.NotFound",
                           f"instance type {instance_type} unknown to the cloud and the table")
        return row.limits("table")
