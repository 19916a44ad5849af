"""ECS RPC actions: request parameters in, response bodies out, in the JSON shapes the
official SDK (alibabacloud_ecs20140526) parses."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .engine import (
    ENI_INUSE,
    MAX_RESULTS,
    EcsError,
    Engine,
    Eni,
    Instance,
    as_int,
    iso,
)

T = TypeVar("T")
Params = Mapping[str, str]


def eni_body(e: Engine, eni: Eni) -> dict[str, Any]:
    ips = [{"PrivateIpAddress": eni.primary_ip, "Primary": True}]
    ips += [{"PrivateIpAddress": ip, "Primary": False} for ip in eni.private_ips]
    body: dict[str, Any] = {
        "NetworkInterfaceId": eni.eni_id,
        "NetworkInterfaceName": eni.name,
        "Description": eni.description,
        "Status": eni.status,
        "Type": eni.type,
        "VpcId": eni.vpc_id,
        "VSwitchId": eni.vswitch_id,
        "ZoneId": eni.zone_id,
        "PrivateIpAddress": eni.primary_ip,
        "MacAddress": eni.mac,
        "InstanceId": eni.instance_id,
        "CreationTime": iso(eni.created),
        "DeleteOnRelease": eni.delete_on_release,
        "OwnerId": str(e.settings.owner_id),
        "ResourceGroupId": "",
        "ServiceManaged": False,
        "SecurityGroupIds": {"SecurityGroupId": list(eni.security_group_ids)},
        "PrivateIpSets": {"PrivateIpSet": ips},
        "Ipv6Sets": {"Ipv6Set": []},
        "Tags": {"Tag": [{"TagKey": k, "TagValue": v} for k, v in eni.tags.items()]},
    }
    if eni.instance_id:
        body["Attachment"] = {"InstanceId": eni.instance_id, "DeviceIndex": eni.device_index,
                              "NetworkCardIndex": 0}
    return body


def instance_body(e: Engine, inst: Instance) -> dict[str, Any]:
    row = e.limits(inst.instance_type)
    enis = e.enis_of(inst.instance_id)
    primary = e.enis.get(inst.primary_eni_id)
    return {
        "InstanceId": inst.instance_id,
        "InstanceName": inst.name,
        "HostName": inst.name,
        "InstanceType": inst.instance_type,
        "InstanceTypeFamily": row.family,
        "Cpu": row.vcpu,
        "Memory": int(row.memory_gib * 1024),
        "RegionId": e.settings.region_id,
        "ZoneId": inst.zone_id,
        "Status": inst.status,
        "InstanceNetworkType": "vpc",
        "CreationTime": iso(inst.created),
        "SecurityGroupIds": {"SecurityGroupId": list(inst.security_group_ids)},
        "VpcAttributes": {
            "VpcId": inst.vpc_id,
            "VSwitchId": inst.vswitch_id,
            "PrivateIpAddress": {"IpAddress": [primary.primary_ip] if primary else []},
        },
        "NetworkInterfaces": {"NetworkInterface": [
            {"NetworkInterfaceId": n.eni_id, "MacAddress": n.mac, "Type": n.type,
             "PrimaryIpAddress": n.primary_ip,
             "PrivateIpSets": {"PrivateIpSet": [
                 {"PrivateIpAddress": ip, "Primary": ip == n.primary_ip} for ip in n.all_ips]}}
            for n in enis if n.status == ENI_INUSE]},
        "Tags": {"Tag": []},
    }


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _offset(token: str) -> int:
    try:
        kind, _, n = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "o":
            raise ValueError(token)
        return int(n)
    except (ValueError, UnicodeDecodeError):
        raise EcsError(400, "InvalidNextToken.Malformed",
                       "The specified NextToken is invalid.") from None


def page(p: Params, items: Sequence[T], default_size: int, max_size: int,
         max_results: int) -> tuple[Sequence[T], dict[str, Any]]:
    """ECS paging: NextToken/MaxResults when either is given, else PageNumber/PageSize."""
    if p.get("NextToken") or p.get("MaxResults"):
        size = as_int(p.get("MaxResults"), "MaxResults", default_size, 1, max_results)
        start = _offset(p["NextToken"]) if p.get("NextToken") else 0
        chunk = items[start:start + size]
        nxt = _token(start + size) if start + size < len(items) else ""
        return chunk, {"NextToken": nxt, "MaxResults": size, "TotalCount": len(items)}
    number = as_int(p.get("PageNumber"), "PageNumber", 1, 1)
    size = as_int(p.get("PageSize"), "PageSize", default_size, 1, max_size)
    start = (number - 1) * size
    return items[start:start + size], {"PageNumber": number, "PageSize": size,
                                       "TotalCount": len(items), "NextToken": ""}


# --- actions ---------------------------------------------------------------------------


def describe_instance_types(e: Engine, p: Params) -> dict[str, Any]:
    rows = e.filter_types(p)
    chunk, meta = page({"MaxResults": p.get("MaxResults") or "1600",
                        "NextToken": p.get("NextToken", "")}, rows, 1600, 1600, 1600)
    return {"NextToken": meta["NextToken"], "InstanceTypes": {"InstanceType": [
        {"InstanceTypeId": r.instance_type, "InstanceTypeFamily": r.family,
         "CpuCoreCount": r.vcpu, "MemorySize": r.memory_gib,
         "EniQuantity": r.eni_quantity, "EniPrivateIpAddressQuantity": r.eni_private_ip_quantity,
         "EniIpv6AddressQuantity": r.eni_ipv6_quantity,
         "EniTotalQuantity": r.eni_total_quantity or r.eni_quantity,
         "EniTrunkSupported": (r.eni_total_quantity or 0) > r.eni_quantity,
         "InstanceCategory": "General-purpose", "CpuArchitecture": "X86"}
        for r in chunk]}}


def describe_instances(e: Engine, p: Params) -> dict[str, Any]:
    chunk, meta = page(p, e.filter_instances(p), 10, 100, 100)
    return dict(meta, Instances={"Instance": [instance_body(e, i) for i in chunk]})


def describe_vswitches(e: Engine, p: Params) -> dict[str, Any]:
    chunk, meta = page({k: v for k, v in p.items() if k not in ("NextToken", "MaxResults")},
                       e.filter_vswitches(p), 10, 50, 50)
    meta.pop("NextToken", None)
    return dict(meta, VSwitches={"VSwitch": [
        {"VSwitchId": v.vswitch_id, "VpcId": v.vpc_id, "ZoneId": v.zone_id,
         "CidrBlock": v.cidr, "AvailableIpAddressCount": e.available_ips(v),
         "Status": "Available", "VSwitchName": v.name, "Description": "",
         "IsDefault": False, "CreationTime": iso(v.created), "ResourceGroupId": ""}
        for v in chunk]})


def describe_security_groups(e: Engine, p: Params) -> dict[str, Any]:
    groups = e.filter_security_groups(p)
    return {"TotalCount": len(groups), "NextToken": "", "RegionId": e.settings.region_id,
            "SecurityGroups": {"SecurityGroup": [
                {"SecurityGroupId": g.security_group_id, "VpcId": g.vpc_id,
                 "SecurityGroupName": "", "SecurityGroupType": "normal", "Description": "",
                 "CreationTime": iso(g.created), "ResourceGroupId": "",
                 "ServiceManaged": False, "Tags": {"Tag": []}}
                for g in groups]}}


def create_network_interface(e: Engine, p: Params) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        return eni_body(e, e.create_eni(p))

    return e.idempotent("CreateNetworkInterface", p.get("ClientToken"), p, run)


def attach_network_interface(e: Engine, p: Params) -> dict[str, Any]:
    e.attach(p.get("NetworkInterfaceId"), p.get("InstanceId"))
    return {}


def detach_network_interface(e: Engine, p: Params) -> dict[str, Any]:
    e.detach(p.get("NetworkInterfaceId"), p.get("InstanceId"))
    return {}


def delete_network_interface(e: Engine, p: Params) -> dict[str, Any]:
    e.delete(p.get("NetworkInterfaceId"))
    return {}


def describe_network_interfaces(e: Engine, p: Params) -> dict[str, Any]:
    p = dict(p)
    if p.get("MaxResults", "").isdigit() and int(p["MaxResults"]) > MAX_RESULTS:
        p["MaxResults"] = str(MAX_RESULTS)  # as ECS: a larger page is taken as 500
    chunk, meta = page(p, e.filter_enis(p), 10, 1000, MAX_RESULTS)
    return dict(meta, NetworkInterfaceSets={"NetworkInterfaceSet": [
        eni_body(e, n) for n in chunk]})


def assign_private_ip_addresses(e: Engine, p: Params) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        eni, ips = e.assign(p)
        return {"AssignedPrivateIpAddressesSet": {
            "NetworkInterfaceId": eni.eni_id, "PrivateIpSet": {"PrivateIpAddress": ips}}}

    return e.idempotent("AssignPrivateIpAddresses", p.get("ClientToken"), p, run)


def unassign_private_ip_addresses(e: Engine, p: Params) -> dict[str, Any]:
    e.unassign(p)
    return {}


def modify_network_interface_attribute(e: Engine, p: Params) -> dict[str, Any]:
    e.modify(p)
    return {}


ACTIONS: dict[str, Callable[[Engine, Params], dict[str, Any]]] = {
    "DescribeInstanceTypes": describe_instance_types,
    "DescribeInstances": describe_instances,
    "DescribeVSwitches": describe_vswitches,
    "DescribeSecurityGroups": describe_security_groups,
    "CreateNetworkInterface": create_network_interface,
    "AttachNetworkInterface": attach_network_interface,
    "DetachNetworkInterface": detach_network_interface,
    "DeleteNetworkInterface": delete_network_interface,
    "DescribeNetworkInterfaces": describe_network_interfaces,
    "AssignPrivateIpAddresses": assign_private_ip_addresses,
    "UnassignPrivateIpAddresses": unassign_private_ip_addresses,
    "ModifyNetworkInterfaceAttribute": modify_network_interface_attribute,
}
