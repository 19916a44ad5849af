"""The emulated region's instance types: what DescribeInstanceTypes answers and what
attach/assign enforce. The emulator keeps its own copy of the figures (data/
instance_types.tsv, each row with its public source) and its own parser, so that it
stays an independent check on the operator: a wrong row on one side shows up as a
difference between the two tables, which a test compares."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA_FILE = Path(__file__).resolve().parent / "data" / "instance_types.tsv"


@dataclass(frozen=True)
class InstanceType:
    """One instance type's network figures, as DescribeInstanceTypes names them."""

    instance_type: str
    family: str
    vcpu: int
    memory_gib: float
    eni_quantity: int  # EniQuantity: ENIs, the primary included
    eni_private_ip_quantity: int  # EniPrivateIpAddressQuantity: IPv4 per ENI, primary incl.
    eni_ipv6_quantity: int
    eni_total_quantity: int | None  # EniTotalQuantity (trunk members included)
    hot_swap: bool  # False: secondary ENIs attach/detach only while Stopped


def parse(lines: Iterable[str]) -> dict[str, InstanceType]:
    out: dict[str, InstanceType] = {}
    for rec in csv.DictReader(lines, delimiter="\t"):
        total = (rec.get("eni_total_quantity") or "").strip()
        name = rec["instance_type"].strip()
        if name in out:
            raise ValueError(f"instance type {name} listed twice")
        out[name] = InstanceType(
            instance_type=name, family=rec["family"].strip(), vcpu=int(rec["vcpu"]),
            memory_gib=float(rec["memory_gib"]), eni_quantity=int(rec["eni_quantity"]),
            eni_private_ip_quantity=int(rec["eni_private_ip_quantity"]),
            eni_ipv6_quantity=int(rec["eni_ipv6_quantity"] or 0),
            eni_total_quantity=int(total) if total else None,
            hot_swap=rec["hot_swap"].strip().lower() == "yes")
    return out


@cache
def catalog(path: Path = DATA_FILE) -> Mapping[str, InstanceType]:
    with open(path, encoding="utf-8", newline="") as f:
        return parse(f)
