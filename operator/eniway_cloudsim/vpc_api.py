"""VPC RPC actions (API version 2016-04-28), the EIP subset: request parameters in,
response bodies out, in the JSON shapes the official SDK (alibabacloud_vpc20160428)
parses. The rules live in eips.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .ecs_api import page
from .eips import MAX_PAGE_SIZE, Eip, EipBook
from .engine import iso

API_VERSION = "2016-04-28"
Params = Mapping[str, str]


def eip_body(book: EipBook, eip: Eip) -> dict[str, Any]:
    region = book.engine.settings.region_id
    eni = book.engine.enis.get(eip.eni_id)
    return {
        "AllocationId": eip.allocation_id,
        "IpAddress": eip.ip,
        "Status": eip.status,
        "Bandwidth": str(eip.bandwidth),
        "EipBandwidth": str(eip.bandwidth),
        "InternetChargeType": eip.internet_charge_type,
        "ChargeType": "PostPaid",
        "AllocationTime": iso(eip.created),
        "RegionId": region,
        "InstanceRegionId": region if eip.instance_id else "",
        "InstanceId": eip.instance_id,
        "InstanceType": eip.instance_type,
        "PrivateIpAddress": eip.private_ip,
        "Mode": eip.mode,
        "VpcId": eni.vpc_id if eni is not None else "",
        "Name": eip.name,
        "Description": eip.description,
        "ISP": "BGP",
        "Netmode": "public",
        "BusinessStatus": "Normal",
        "DeletionProtection": False,
        "ServiceManaged": 0,
        "OperationLocks": {"LockReason": []},
        "AvailableRegions": {"AvailableRegion": [region]},
        "Tags": {"Tag": [{"Key": k, "Value": v} for k, v in eip.tags.items()]},
    }


def allocate_eip_address(book: EipBook, p: Params) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        eip = book.allocate(p)
        return {"AllocationId": eip.allocation_id, "EipAddress": eip.ip,
                "ResourceGroupId": ""}

    return book.engine.idempotent("AllocateEipAddress", p.get("ClientToken"), p, run)


def associate_eip_address(book: EipBook, p: Params) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        book.associate(p)
        return {}

    return book.engine.idempotent("AssociateEipAddress", p.get("ClientToken"), p, run)


def unassociate_eip_address(book: EipBook, p: Params) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        book.unassociate(p)
        return {}

    return book.engine.idempotent("UnassociateEipAddress", p.get("ClientToken"), p, run)


def release_eip_address(book: EipBook, p: Params) -> dict[str, Any]:
    book.release(p)
    return {}


def describe_eip_addresses(book: EipBook, p: Params) -> dict[str, Any]:
    paging = {k: v for k, v in p.items() if k in ("PageNumber", "PageSize")}
    chunk, meta = page(paging, book.filter(p), 10, MAX_PAGE_SIZE, MAX_PAGE_SIZE)
    meta.pop("NextToken", None)
    return dict(meta, EipAddresses={"EipAddress": [eip_body(book, e) for e in chunk]})


ACTIONS: dict[str, Callable[[EipBook, Params], dict[str, Any]]] = {
    "AllocateEipAddress": allocate_eip_address,
    "AssociateEipAddress": associate_eip_address,
    "UnassociateEipAddress": unassociate_eip_address,
    "ReleaseEipAddress": release_eip_address,
    "DescribeEipAddresses": describe_eip_addresses,
}
