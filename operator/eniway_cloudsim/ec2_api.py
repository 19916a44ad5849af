"""EC2 Query API actions (version 2016-11-15), the ENI subset boto3 calls: form
parameters in, XML out in the shapes botocore parses, EC2's error codes. The dialect
sees only aws-flavoured VPCs and what is in them; the rules of addresses, attachment
delays and persistence are the engine's, shared with the ECS dialect.

Limits come from the instance type (ec2_catalog.py): MaximumNetworkInterfaces in total
and per network card (AttachmentLimitExceeded), Ipv4AddressesPerInterface with the
primary IP counted (PrivateIpAddressLimitExceeded). EC2 has no per-call cap on
AssignPrivateIpAddresses. An ENI that is not attached may hold as many IPs as the
largest type allows; attaching it to a smaller type is refused."""

from __future__ import annotations

import base64
import fnmatch
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from .ec2_catalog import Ec2Type, ec2_catalog
from .engine import (
    AWS,
    ENI_ATTACHING,
    ENI_AVAILABLE,
    ENI_DETACHING,
    ENI_INUSE,
    INSTANCE_RUNNING,
    EcsError,
    Engine,
    Eni,
    Instance,
    SecurityGroup,
    VSwitch,
    repeat_list,
)
from .faults import Rate

API_VERSION = "2016-11-15"
XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
Params = Mapping[str, str]
ID_RE = re.compile(r"^[0-9a-f]{8}([0-9a-f]{9})?$")
MAX_TAGS = 50  # tags per resource
MAX_SECURITY_GROUPS = 5  # per ENI (the default quota)

# Request rate limiting, per API and per account ("Request throttling for the Amazon
# EC2 API", EC2 Developer Guide): bucket size (burst), refill per second.
NON_MUTATING = Rate(20.0, 100)
UNFILTERED_NON_MUTATING = Rate(10.0, 50)
MUTATING = Rate(5.0, 200)


def err(code: str, message: str, status: int = 400) -> EcsError:
    return EcsError(status, code, message)


# --- XML ---------------------------------------------------------------------------------


def to_xml(tag: str, value: Any) -> str:
    """dict -> nested elements; list -> <item> children; bool -> true/false; None
    -> left out (botocore leaves the member unset)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        inner = "".join(to_xml(k, v) for k, v in value.items())
    elif isinstance(value, list):
        inner = "".join(to_xml("item", v) for v in value)
    elif isinstance(value, bool):
        inner = "true" if value else "false"
    else:
        inner = escape(str(value))
    return f"<{tag}>{inner}</{tag}>"


def response(action: str, request_id: str, body: Mapping[str, Any]) -> bytes:
    inner = "".join(to_xml(k, v) for k, v in body.items())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{XMLNS}">'
            f"<requestId>{request_id}</requestId>{inner}</{action}Response>").encode()


def error_response(code: str, message: str, request_id: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"</Errors><RequestID>{request_id}</RequestID></Response>").encode()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


# --- parameters ----------------------------------------------------------------------------


def _int(p: Params, name: str, default: int | None = None, lo: int | None = None,
         hi: int | None = None) -> int:
    text = p.get(name, "")
    if text == "":
        if default is None:
            raise err("MissingParameter", f"The request must contain the parameter {name}")
        return default
    try:
        n = int(text)
    except ValueError:
        raise err("InvalidParameterValue",
                  f"Value ({text}) for parameter {name} is invalid.") from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise err("InvalidParameterValue", f"Value ({n}) for parameter {name} is invalid. "
                  f"It must be between {lo} and {hi}.")
    return n


def _bool(p: Params, name: str) -> bool | None:
    text = p.get(name)
    if text is None or text == "":
        return None
    if text.lower() not in ("true", "false"):
        raise err("InvalidParameterValue", f"Value ({text}) for parameter {name} is invalid.")
    return text.lower() == "true"


def _required(p: Params, name: str) -> str:
    value = p.get(name, "")
    if not value:
        raise err("MissingParameter", f"The request must contain the parameter {name}")
    return value


def _structs(p: Params, prefix: str) -> list[dict[str, str]]:
    """``Prefix.N.Field`` (and deeper ``Prefix.N.Sub.M.Field``) as one dict per N, in
    N order, keys relative to ``Prefix.N.``."""
    out: dict[int, dict[str, str]] = {}
    head = prefix + "."
    for k, v in p.items():
        if not k.startswith(head):
            continue
        n, _, rest = k[len(head):].partition(".")
        if n.isdigit() and rest:
            out.setdefault(int(n), {})[rest] = v
    return [out[n] for n in sorted(out)]


def filters(p: Params) -> list[tuple[str, list[str]]]:
    return [(f.get("Name", ""), repeat_list(f, "Value")) for f in _structs(p, "Filter")]


def _tags(fields: Mapping[str, str], prefix: str = "Tag") -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in _structs(fields, prefix) if "Key" in t}


def _matches(value: str, wanted: Sequence[str]) -> bool:
    """EC2 filter values: any of them, with * and ? as wildcards."""
    return any(fnmatch.fnmatchcase(value, w) for w in wanted)


def _check_id(value: str, prefix: str, kind: str) -> None:
    if not (value.startswith(prefix) and ID_RE.match(value[len(prefix):])):
        raise err(f"{kind}.Malformed", f"Invalid id: \"{value}\" (expecting \"{prefix}...\")")


def _page(p: Params, items: Sequence[Any], lo: int, hi: int) -> tuple[Sequence[Any], str]:
    if not p.get("MaxResults") and not p.get("NextToken"):
        return items, ""
    size = _int(p, "MaxResults", hi, lo, hi)
    start = 0
    if p.get("NextToken"):
        try:
            kind, _, n = base64.urlsafe_b64decode(p["NextToken"].encode()).decode() \
                .partition(":")
            if kind != "ec2":
                raise ValueError(kind)
            start = int(n)
        except (ValueError, UnicodeDecodeError):
            raise err("InvalidPaginationToken",
                      "The pagination token provided is invalid.") from None
    end = start + size
    nxt = base64.urlsafe_b64encode(f"ec2:{end}".encode()).decode() if end < len(items) else ""
    return items[start:end], nxt


def _no_ids_with_paging(p: Params, ids: Sequence[str], name: str) -> None:
    if ids and p.get("MaxResults"):
        raise err("InvalidParameterCombination", f"The parameter {name} cannot be used "
                  "with the parameter maxResults")


def _ids(p: Params, name: str, known: set[str], prefix: str, kind: str, what: str,
         set_name: str) -> list[str]:
    """``Name.N`` ids: well-formed (``kind``.Malformed), not with MaxResults, all
    existing (``kind``.NotFound naming the first missing one)."""
    ids = repeat_list(p, name)
    _no_ids_with_paging(p, ids, set_name)
    for i in ids:
        _check_id(i, prefix, kind)
    missing = [i for i in ids if i not in known]
    if missing:
        raise err(f"{kind}.NotFound", f"The {what} ID '{missing[0]}' does not exist")
    return ids


# --- views ----------------------------------------------------------------------------------


@dataclass
class Ec2:
    """The dialect's view of the engine: only aws-flavoured objects exist here."""

    e: Engine

    @property
    def account(self) -> str:
        return self.e.settings.aws_account_id

    def aws(self, vpc_id: str) -> bool:
        return self.e.cloud_of(vpc_id) == AWS

    def enis(self) -> list[Eni]:
        return sorted((n for n in self.e.enis.values() if self.aws(n.vpc_id)),
                      key=lambda n: n.seq)

    def instances(self) -> list[Instance]:
        return sorted((i for i in self.e.instances.values() if self.aws(i.vpc_id)),
                      key=lambda i: (i.created, i.instance_id))

    def subnets(self) -> list[VSwitch]:
        return sorted((v for v in self.e.vswitches.values() if v.cloud == AWS),
                      key=lambda v: (v.created, v.vswitch_id))

    def groups(self) -> list[SecurityGroup]:
        return sorted((g for g in self.e.sgs.values() if self.aws(g.vpc_id)),
                      key=lambda g: (g.created, g.security_group_id))

    def eni(self, eni_id: str | None) -> Eni:
        if not eni_id:
            raise err("MissingParameter", "The request must contain the parameter "
                      "NetworkInterfaceId")
        _check_id(eni_id, "eni-", "InvalidNetworkInterfaceID")
        eni = self.e.enis.get(eni_id)
        if eni is None or not self.aws(eni.vpc_id):
            raise err("InvalidNetworkInterfaceID.NotFound",
                      f"The networkInterface ID '{eni_id}' does not exist")
        return eni

    def instance(self, instance_id: str | None) -> Instance:
        if not instance_id:
            raise err("MissingParameter", "The request must contain the parameter InstanceId")
        _check_id(instance_id, "i-", "InvalidInstanceID")
        inst = self.e.instances.get(instance_id)
        if inst is None or not self.aws(inst.vpc_id):
            raise err("InvalidInstanceID.NotFound",
                      f"The instance ID '{instance_id}' does not exist")
        return inst

    def subnet(self, subnet_id: str | None) -> VSwitch:
        if not subnet_id:
            raise err("MissingParameter", "The request must contain the parameter SubnetId")
        vsw = self.e.vswitches.get(subnet_id)
        if vsw is None or vsw.cloud != AWS:
            raise err("InvalidSubnetID.NotFound", f"The subnet ID '{subnet_id}' does not exist")
        return vsw

    def check_groups(self, ids: Sequence[str], vpc_id: str) -> list[str]:
        ids = list(dict.fromkeys(ids))
        if len(ids) > MAX_SECURITY_GROUPS:
            raise err("SecurityGroupsPerInterfaceLimitExceeded",
                      f"You have exceeded the maximum number of security groups "
                      f"({MAX_SECURITY_GROUPS}) per network interface.")
        for g in ids:
            sg = self.e.sgs.get(g)
            if sg is None or not self.aws(sg.vpc_id):
                raise err("InvalidGroup.NotFound", f"The security group '{g}' does not exist")
            if sg.vpc_id != vpc_id:
                raise err("InvalidParameter", f"Security group {g} and subnet belong to "
                          "different networks.")
        return ids

    def type_of(self, inst: Instance) -> Ec2Type:
        return ec2_catalog()[inst.instance_type]

    def by_attachment(self, attachment_id: str | None) -> Eni:
        if not attachment_id:
            raise err("MissingParameter", "The request must contain the parameter "
                      "AttachmentId")
        for eni in self.enis():
            if eni.attachment_id == attachment_id and eni.instance_id:
                return eni
        raise err("InvalidAttachmentID.NotFound",
                  f"The attachment ID '{attachment_id}' does not exist")

    # -- bodies --

    def group_set(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return [{"groupId": g, "groupName": g} for g in ids]

    @staticmethod
    def tag_set(tags: Mapping[str, str]) -> list[dict[str, Any]]:
        return [{"key": k, "value": v} for k, v in tags.items()]

    @staticmethod
    def eni_status(eni: Eni) -> str:
        return "available" if eni.status == ENI_AVAILABLE else "in-use"

    @staticmethod
    def attachment_status(eni: Eni) -> str:
        return {ENI_ATTACHING: "attaching", ENI_INUSE: "attached",
                ENI_DETACHING: "detaching"}.get(eni.status, "detached")

    def private_dns(self, ip: str) -> str:
        region = self.e.settings.aws_region
        suffix = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
        return f"ip-{ip.replace('.', '-')}.{suffix}"

    def eni_body(self, eni: Eni) -> dict[str, Any]:
        body: dict[str, Any] = {
            "availabilityZone": eni.zone_id,
            "description": eni.description,
            "groupSet": self.group_set(eni.security_group_ids),
            "interfaceType": "interface",
            "ipv6AddressesSet": [],
            "macAddress": eni.mac,
            "networkInterfaceId": eni.eni_id,
            "ownerId": self.account,
            "privateDnsName": self.private_dns(eni.primary_ip),
            "privateIpAddress": eni.primary_ip,
            "privateIpAddressesSet": [
                {"privateDnsName": self.private_dns(ip), "privateIpAddress": ip,
                 "primary": ip == eni.primary_ip} for ip in eni.all_ips],
            "requesterManaged": False,
            "sourceDestCheck": eni.source_dest_check,
            "status": self.eni_status(eni),
            "subnetId": eni.vswitch_id,
            "tagSet": self.tag_set(eni.tags),
            "vpcId": eni.vpc_id,
        }
        if eni.instance_id:
            body["attachment"] = {
                "attachTime": _iso(eni.attached_at), "attachmentId": eni.attachment_id,
                "deleteOnTermination": eni.delete_on_release, "deviceIndex": eni.device_index,
                "networkCardIndex": eni.network_card_index, "instanceId": eni.instance_id,
                "instanceOwnerId": self.account, "status": self.attachment_status(eni)}
        return body

    def instance_body(self, inst: Instance) -> dict[str, Any]:
        t = self.type_of(inst)
        enis = self.e.enis_of(inst.instance_id)
        primary = self.e.enis[inst.primary_eni_id]
        running = inst.status == INSTANCE_RUNNING
        body: dict[str, Any] = {
            "instanceId": inst.instance_id,
            "imageId": "ami-0eniwaycloudsim0",
            "instanceState": {"code": 16 if running else 80,
                              "name": "running" if running else "stopped"},
            "privateDnsName": self.private_dns(primary.primary_ip),
            "instanceType": inst.instance_type,
            "launchTime": _iso(inst.created),
            "placement": {"availabilityZone": inst.zone_id, "tenancy": "default"},
            "subnetId": inst.vswitch_id,
            "vpcId": inst.vpc_id,
            "privateIpAddress": primary.primary_ip,
            "architecture": t.architectures[-1] if t.architectures else "x86_64",
            "hypervisor": "xen",  # Instance.Hypervisor is ovm | xen; Nitro reports xen
            "sourceDestCheck": primary.source_dest_check,
            "groupSet": self.group_set(inst.security_group_ids),
            "networkInterfaceSet": [{
                "networkInterfaceId": n.eni_id, "subnetId": n.vswitch_id, "vpcId": n.vpc_id,
                "description": n.description, "ownerId": self.account,
                "status": self.eni_status(n), "macAddress": n.mac,
                "privateIpAddress": n.primary_ip,
                "privateDnsName": self.private_dns(n.primary_ip),
                "sourceDestCheck": n.source_dest_check,
                "groupSet": self.group_set(n.security_group_ids),
                "attachment": {"attachmentId": n.attachment_id, "deviceIndex": n.device_index,
                               "networkCardIndex": n.network_card_index,
                               "status": self.attachment_status(n),
                               "attachTime": _iso(n.attached_at),
                               "deleteOnTermination": n.delete_on_release},
                "privateIpAddressesSet": [
                    {"privateIpAddress": ip, "primary": ip == n.primary_ip,
                     "privateDnsName": self.private_dns(ip)} for ip in n.all_ips],
                "interfaceType": "interface"} for n in enis],
            "tagSet": self.tag_set({"Name": inst.name} if inst.name else {}),
        }
        if inst.ram_role:
            body["iamInstanceProfile"] = {
                "arn": f"arn:aws:iam::{self.account}:instance-profile/{inst.ram_role}",
                "id": "AIPA" + inst.instance_id[2:].upper()}
        return body


# --- actions ----------------------------------------------------------------------------------


def describe_instances(x: Ec2, p: Params) -> dict[str, Any]:
    ids = _ids(p, "InstanceId", {i.instance_id for i in x.instances()}, "i-",
               "InvalidInstanceID", "instance", "instanceIdSet")
    getters: dict[str, Callable[[Instance], list[str]]] = {
        "instance-id": lambda i: [i.instance_id],
        "vpc-id": lambda i: [i.vpc_id],
        "subnet-id": lambda i: [i.vswitch_id],
        "availability-zone": lambda i: [i.zone_id],
        "instance-type": lambda i: [i.instance_type],
        "instance-state-name": lambda i: [
            "running" if i.status == INSTANCE_RUNNING else "stopped"],
        "private-ip-address": lambda i: [x.e.enis[i.primary_eni_id].primary_ip],
        "network-interface.network-interface-id": lambda i: [
            n.eni_id for n in x.e.enis_of(i.instance_id)],
    }
    rows = _filtered(x.instances(), filters(p), getters, lambda i: {"Name": i.name})
    rows = [i for i in rows if not ids or i.instance_id in ids]
    _int(p, "MaxResults", 1000, 5, 1000)
    chunk, nxt = _page(p, rows, 5, 1000)
    return {"reservationSet": [
        {"reservationId": "r-" + i.instance_id[2:], "ownerId": x.account, "groupSet": [],
         "instancesSet": [x.instance_body(i)]} for i in chunk],
        "nextToken": nxt or None}


def _filtered(items: Sequence[Any], fs: Sequence[tuple[str, list[str]]],
              getters: Mapping[str, Callable[[Any], list[str]]],
              tags_of: Callable[[Any], Mapping[str, str]]) -> list[Any]:
    for name, _ in fs:
        if name not in getters and not name.startswith("tag:") and name != "tag-key":
            raise err("InvalidParameterValue", f"The filter '{name}' is invalid")
    out = []
    for item in items:
        for name, wanted in fs:
            if name.startswith("tag:"):
                value = tags_of(item).get(name[4:])
                if value is None or not _matches(value, wanted):
                    break
            elif name == "tag-key":
                if not any(_matches(k, wanted) for k in tags_of(item)):
                    break
            elif not any(_matches(v, wanted) for v in getters[name](item)):
                break
        else:
            out.append(item)
    return out


def describe_instance_types(x: Ec2, p: Params) -> dict[str, Any]:
    table = ec2_catalog()
    wanted = repeat_list(p, "InstanceType")
    if len(wanted) > 100:
        raise err("InvalidParameterValue", "At most 100 instance types per request.")
    unknown = [t for t in wanted if t not in table]
    if unknown:
        raise err("InvalidInstanceType", f"The following supplied instance types do not "
                  f"exist: [{', '.join(unknown)}]")
    getters: dict[str, Callable[[Ec2Type], list[str]]] = {
        "instance-type": lambda t: [t.instance_type],
        "current-generation": lambda t: ["true" if t.current_generation else "false"],
        "hypervisor": lambda t: [t.hypervisor],
        "processor-info.supported-architecture": lambda t: list(t.architectures),
        "network-info.maximum-network-interfaces": lambda t: [str(t.max_enis)],
        "network-info.ipv4-addresses-per-interface": lambda t: [str(t.ipv4_per_eni)],
    }
    rows = _filtered([table[t] for t in (wanted or sorted(table))], filters(p), getters,
                     lambda t: {})
    chunk, nxt = _page(p, rows, 5, 100)
    return {"instanceTypeSet": [_type_body(t) for t in chunk], "nextToken": nxt or None}


def _type_body(t: Ec2Type) -> dict[str, Any]:
    return {
        "instanceType": t.instance_type,
        "currentGeneration": t.current_generation,
        "hypervisor": t.hypervisor or None,
        "bareMetal": t.instance_type.endswith(".metal"),
        "processorInfo": {"supportedArchitectures": list(t.architectures)},
        "vCpuInfo": {"defaultVCpus": t.vcpu},
        "memoryInfo": {"sizeInMiB": t.memory_mib},
        "networkInfo": {
            "maximumNetworkInterfaces": t.max_enis,
            "maximumNetworkCards": len(t.card_enis),
            "defaultNetworkCardIndex": 0,
            "networkCards": [{"networkCardIndex": i, "maximumNetworkInterfaces": n}
                             for i, n in enumerate(t.card_enis)],
            "ipv4AddressesPerInterface": t.ipv4_per_eni,
            "ipv6AddressesPerInterface": t.ipv6_per_eni,
            "ipv6Supported": t.ipv6_per_eni > 0,
        },
    }


def describe_subnets(x: Ec2, p: Params) -> dict[str, Any]:
    ids = _ids(p, "SubnetId", {v.vswitch_id for v in x.subnets()}, "subnet-",
               "InvalidSubnetID", "subnet", "subnetIds")
    getters: dict[str, Callable[[VSwitch], list[str]]] = {
        "subnet-id": lambda v: [v.vswitch_id], "vpc-id": lambda v: [v.vpc_id],
        "availability-zone": lambda v: [v.zone_id], "cidr-block": lambda v: [v.cidr],
        "state": lambda v: ["available"]}
    rows = [v for v in _filtered(x.subnets(), filters(p), getters,
                                 lambda v: {"Name": v.name} if v.name else {})
            if not ids or v.vswitch_id in ids]
    chunk, nxt = _page(p, rows, 5, 1000)
    return {"subnetSet": [{
        "subnetId": v.vswitch_id,
        "subnetArn": f"arn:aws:ec2:{x.e.settings.aws_region}:{x.account}:subnet/{v.vswitch_id}",
        "state": "available", "vpcId": v.vpc_id, "cidrBlock": v.cidr,
        "availableIpAddressCount": x.e.available_ips(v), "availabilityZone": v.zone_id,
        "defaultForAz": False, "mapPublicIpOnLaunch": False, "ownerId": x.account,
        "tagSet": x.tag_set({"Name": v.name} if v.name else {})} for v in chunk],
        "nextToken": nxt or None}


def describe_security_groups(x: Ec2, p: Params) -> dict[str, Any]:
    ids = repeat_list(p, "GroupId")
    _no_ids_with_paging(p, ids, "groupIds")
    known = {g.security_group_id for g in x.groups()}
    for g in ids:
        if g not in known:
            raise err("InvalidGroup.NotFound", f"The security group '{g}' does not exist")
    getters: dict[str, Callable[[SecurityGroup], list[str]]] = {
        "group-id": lambda g: [g.security_group_id], "vpc-id": lambda g: [g.vpc_id],
        "group-name": lambda g: [g.security_group_id]}
    rows = [g for g in _filtered(x.groups(), filters(p), getters, lambda g: {})
            if not ids or g.security_group_id in ids]
    chunk, nxt = _page(p, rows, 5, 1000)
    return {"securityGroupInfo": [{
        "ownerId": x.account, "groupId": g.security_group_id,
        "groupName": g.security_group_id, "groupDescription": "eniway-cloudsim",
        "vpcId": g.vpc_id, "ipPermissions": [], "ipPermissionsEgress": [], "tagSet": []}
        for g in chunk], "nextToken": nxt or None}


def _max_ips_unattached() -> int:
    return max(t.ipv4_per_eni for t in ec2_catalog().values())


def _ip_cap(x: Ec2, eni: Eni) -> int:
    """IPv4 addresses the ENI may hold, the primary included."""
    inst = x.e.instances.get(eni.instance_id) if eni.instance_id else None
    return x.type_of(inst).ipv4_per_eni if inst is not None else _max_ips_unattached()


def _allocate_error(e: EcsError, subnet_id: str) -> EcsError:
    if e.code == "InvalidVSwitchId.IpNotEnough":
        return err("InsufficientFreeAddressesInSubnet",
                   f"The specified subnet {subnet_id} does not have enough free addresses "
                   "to satisfy the request.")
    if e.code == "InvalidIp.IpAssigned":
        return err("InvalidIPAddress.InUse", e.message)
    if e.code in ("InvalidVSwitchId.IpInvalid", "InvalidParameter.PrivateIpAddress"):
        return err("InvalidParameterValue", e.message)
    return e


def create_network_interface(x: Ec2, p: Params) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        vsw = x.subnet(p.get("SubnetId"))
        sgs = x.check_groups(repeat_list(p, "SecurityGroupId"), vsw.vpc_id)
        if not sgs:  # EC2 puts the ENI in the VPC's default group
            sgs = [g.security_group_id for g in x.groups() if g.vpc_id == vsw.vpc_id][:1]
        tags: dict[str, str] = {}
        for spec in _structs(p, "TagSpecification"):
            if spec.get("ResourceType") != "network-interface":
                raise err("InvalidParameterValue", f"'{spec.get('ResourceType')}' is not a "
                          "valid taggable resource type for this operation.")
            tags.update(_tags(spec))
        if len(tags) > MAX_TAGS:
            raise err("TagLimitExceeded", f"The maximum number of tags ({MAX_TAGS}) "
                      "per resource was exceeded.")
        listed = _structs(p, "PrivateIpAddresses")
        primary = p.get("PrivateIpAddress", "")
        chosen_primary = [a["PrivateIpAddress"] for a in listed
                          if a.get("Primary", "").lower() == "true"]
        if len(chosen_primary) > 1 or (primary and chosen_primary
                                       and chosen_primary[0] != primary):
            raise err("InvalidParameterValue", "Only one primary private IP address can be "
                      "specified.")
        primary = primary or (chosen_primary[0] if chosen_primary else "")
        secondary = [a["PrivateIpAddress"] for a in listed
                     if "PrivateIpAddress" in a and a["PrivateIpAddress"] != primary]
        count = _int(p, "SecondaryPrivateIpAddressCount", 0, 0)
        if count and secondary:
            raise err("InvalidParameterCombination", "SecondaryPrivateIpAddressCount cannot "
                      "be used with PrivateIpAddresses having secondary addresses.")
        if 1 + count + len(secondary) > _max_ips_unattached():
            raise err("PrivateIpAddressLimitExceeded", "Number of private addresses will "
                      f"exceed limit ({_max_ips_unattached()} per network interface).")
        try:
            eni = x.e.new_eni(vsw, sgs, tags, count, secondary, primary,
                              description=p.get("Description", ""))
        except EcsError as e:
            raise _allocate_error(e, vsw.vswitch_id) from None
        return {"networkInterface": x.eni_body(eni),
                "clientToken": p.get("ClientToken") or None}

    return x.e.idempotent("ec2:CreateNetworkInterface", p.get("ClientToken"), p, run)


def attach_network_interface(x: Ec2, p: Params) -> dict[str, Any]:
    eni = x.eni(p.get("NetworkInterfaceId"))
    inst = x.instance(p.get("InstanceId"))
    index = _int(p, "DeviceIndex")
    card = _int(p, "NetworkCardIndex", 0, 0)
    t = x.type_of(inst)
    if card >= len(t.card_enis):
        raise err("InvalidParameterValue", f"Network card index {card} is not valid for "
                  f"instance type {t.instance_type} ({len(t.card_enis)} network cards).")
    if eni.status != ENI_AVAILABLE:
        raise err("InvalidParameterValue", f"Interface: [{eni.eni_id}] in use.")
    if eni.zone_id != inst.zone_id:
        raise err("InvalidParameterValue", f"Interface {eni.eni_id} is in "
                  f"{eni.zone_id}, instance {inst.instance_id} in {inst.zone_id}.")
    if eni.vpc_id != inst.vpc_id:
        raise err("InvalidParameterValue", "The network interface and the instance are in "
                  "different VPCs.")
    mine = [n for n in x.e.enis.values() if n.instance_id == inst.instance_id]
    on_card = [n for n in mine if n.network_card_index == card]
    if len(mine) >= t.max_enis or len(on_card) >= t.card_enis[card]:
        raise err("AttachmentLimitExceeded", f"Interface count {len(mine) + 1} exceeds the "
                  f"limit for {t.instance_type} ({t.max_enis}; {t.card_enis[card]} on "
                  f"network card {card})")
    if index < 1 or index >= 128:
        raise err("InvalidParameterValue", f"Value ({index}) for parameter deviceIndex is "
                  "invalid.")
    if any(n.device_index == index and n.network_card_index == card for n in mine):
        raise err("InvalidParameterValue", f"Instance '{inst.instance_id}' already has an "
                  f"interface attached at device index '{index}'.")
    if len(eni.all_ips) > t.ipv4_per_eni:
        raise err("PrivateIpAddressLimitExceeded", f"The network interface holds "
                  f"{len(eni.all_ips)} addresses; {t.instance_type} allows {t.ipv4_per_eni}.")
    eni = x.e.attach(eni.eni_id, inst.instance_id, AWS, device_index=index,
                     network_card_index=card)
    return {"attachmentId": eni.attachment_id, "networkCardIndex": card}


def detach_network_interface(x: Ec2, p: Params) -> dict[str, Any]:
    eni = x.by_attachment(p.get("AttachmentId"))
    _bool(p, "Force")
    if eni.type == "Primary":
        raise err("OperationNotPermitted", f"The network interface at device index 0 "
                  f"cannot be detached ({eni.eni_id}).")
    if eni.status == ENI_ATTACHING:
        raise err("IncorrectState", f"The attachment {eni.attachment_id} is attaching.")
    x.e.detach(eni.eni_id, eni.instance_id, AWS)
    return {"return": True}


def delete_network_interface(x: Ec2, p: Params) -> dict[str, Any]:
    eni = x.eni(p.get("NetworkInterfaceId"))
    if eni.status != ENI_AVAILABLE:
        raise err("InvalidNetworkInterface.InUse",
                  f"The network interface '{eni.eni_id}' is currently in use.")
    x.e.delete(eni.eni_id, AWS)
    return {"return": True}


def assign_private_ip_addresses(x: Ec2, p: Params) -> dict[str, Any]:
    eni = x.eni(p.get("NetworkInterfaceId"))
    wanted = repeat_list(p, "PrivateIpAddress")
    has_count = bool(p.get("SecondaryPrivateIpAddressCount"))
    if wanted and has_count:
        raise err("InvalidParameterCombination", "Specify either PrivateIpAddresses or "
                  "SecondaryPrivateIpAddressCount, not both.")
    if not wanted and not has_count:
        raise err("MissingParameter", "Specify PrivateIpAddresses or "
                  "SecondaryPrivateIpAddressCount.")
    n = len(wanted) if wanted else _int(p, "SecondaryPrivateIpAddressCount", lo=1)
    cap = _ip_cap(x, eni)
    if len(eni.all_ips) + n > cap:
        raise err("PrivateIpAddressLimitExceeded", f"Number of private addresses will exceed "
                  f"limit: {eni.eni_id} holds {len(eni.all_ips)} of {cap}, {n} more asked.")
    try:  # also while attaching or detaching: the IPs belong to the ENI, not the attachment
        ips = x.e.grow_ips(eni, n, wanted)
    except EcsError as e:
        raise _allocate_error(e, eni.vswitch_id) from None
    return {"networkInterfaceId": eni.eni_id,
            "assignedPrivateIpAddressesSet": [{"privateIpAddress": ip} for ip in ips]}


def unassign_private_ip_addresses(x: Ec2, p: Params) -> dict[str, Any]:
    eni = x.eni(p.get("NetworkInterfaceId"))
    ips = repeat_list(p, "PrivateIpAddress")
    if not ips:
        raise err("MissingParameter", "The request must contain the parameter "
                  "PrivateIpAddress")
    stray = [ip for ip in ips if ip not in eni.private_ips]
    if stray:
        raise err("InvalidParameterValue", f"Some of the specified addresses are not "
                  f"assigned to interface {eni.eni_id}: {', '.join(stray)}")
    x.e.shrink_ips(eni, ips)
    return {"return": True}


def modify_network_interface_attribute(x: Ec2, p: Params) -> dict[str, Any]:
    eni = x.eni(p.get("NetworkInterfaceId"))
    sgs = repeat_list(p, "SecurityGroupId")
    given = [name for name, present in (
        ("SourceDestCheck", "SourceDestCheck.Value" in p), ("SecurityGroupId", bool(sgs)),
        ("Description", "Description.Value" in p),
        ("Attachment", any(k.startswith("Attachment.") for k in p))) if present]
    if len(given) != 1:
        raise err("InvalidParameterCombination", "Exactly one attribute must be modified "
                  f"per call, not {len(given)} ({', '.join(given) or 'none'}).")
    if given == ["SourceDestCheck"]:
        value = _bool(p, "SourceDestCheck.Value")
        eni.source_dest_check = bool(value)
    elif given == ["SecurityGroupId"]:
        eni.security_group_ids = x.check_groups(sgs, eni.vpc_id)
    elif given == ["Description"]:
        eni.description = p["Description.Value"]
    else:
        attachment = p.get("Attachment.AttachmentId", "")
        if not attachment:
            raise err("MissingParameter", "The request must contain the parameter "
                      "Attachment.AttachmentId")
        if attachment != eni.attachment_id or not eni.instance_id:
            raise err("InvalidAttachmentID.NotFound",
                      f"The attachment ID '{attachment}' does not exist")
        value = _bool(p, "Attachment.DeleteOnTermination")
        if value is None:
            raise err("MissingParameter", "The request must contain the parameter "
                      "Attachment.DeleteOnTermination")
        eni.delete_on_release = value
    x.e._save("eni", eni.eni_id, eni)
    return {"return": True}


def describe_network_interfaces(x: Ec2, p: Params) -> dict[str, Any]:
    ids = _ids(p, "NetworkInterfaceId", {n.eni_id for n in x.enis()}, "eni-",
               "InvalidNetworkInterfaceID", "networkInterface", "networkInterfaceIdSet")
    getters: dict[str, Callable[[Eni], list[str]]] = {
        "network-interface-id": lambda n: [n.eni_id],
        "status": lambda n: [x.eni_status(n)],
        "attachment.instance-id": lambda n: [n.instance_id] if n.instance_id else [],
        "attachment.attachment-id": lambda n: [n.attachment_id] if n.instance_id else [],
        "attachment.status": lambda n: [x.attachment_status(n)] if n.instance_id else [],
        "attachment.device-index": lambda n: [str(n.device_index)] if n.instance_id else [],
        "vpc-id": lambda n: [n.vpc_id],
        "subnet-id": lambda n: [n.vswitch_id],
        "availability-zone": lambda n: [n.zone_id],
        "private-ip-address": lambda n: n.all_ips,
        "addresses.private-ip-address": lambda n: n.all_ips,
        "group-id": lambda n: list(n.security_group_ids),
        "description": lambda n: [n.description],
        "mac-address": lambda n: [n.mac],
    }
    rows = [n for n in _filtered(x.enis(), filters(p), getters, lambda n: n.tags)
            if not ids or n.eni_id in ids]
    chunk, nxt = _page(p, rows, 5, 1000)
    return {"networkInterfaceSet": [x.eni_body(n) for n in chunk], "nextToken": nxt or None}


def _tag_targets(x: Ec2, p: Params) -> list[Eni]:
    ids = repeat_list(p, "ResourceId")
    if not ids:
        raise err("MissingParameter", "The request must contain the parameter resourceIdSet")
    for i in ids:
        if not i.startswith("eni-"):
            raise err("InvalidID", f"The ID '{i}' is not valid (this emulator tags network "
                      "interfaces).")
    return [x.eni(i) for i in ids]


def create_tags(x: Ec2, p: Params) -> dict[str, Any]:
    targets = _tag_targets(x, p)
    tags = _tags(p)
    if not tags:
        raise err("MissingParameter", "The request must contain the parameter tagSet")
    for eni in targets:
        if len({**eni.tags, **tags}) > MAX_TAGS:
            raise err("TagLimitExceeded", f"The maximum number of tags ({MAX_TAGS}) per "
                      f"resource was exceeded ({eni.eni_id}).")
    for eni in targets:
        eni.tags.update(tags)
        x.e._save("eni", eni.eni_id, eni)
    return {"return": True}


def delete_tags(x: Ec2, p: Params) -> dict[str, Any]:
    targets = _tag_targets(x, p)
    given = _structs(p, "Tag")
    for eni in targets:
        if not given:  # no Tag.N: every tag goes
            eni.tags.clear()
        for t in given:
            key = t.get("Key", "")
            if key in eni.tags and ("Value" not in t or eni.tags[key] == t["Value"]):
                del eni.tags[key]
        x.e._save("eni", eni.eni_id, eni)
    return {"return": True}


Action = Callable[[Ec2, Params], dict[str, Any]]
ACTIONS: dict[str, Action] = {
    "DescribeInstances": describe_instances,
    "DescribeInstanceTypes": describe_instance_types,
    "DescribeSubnets": describe_subnets,
    "DescribeSecurityGroups": describe_security_groups,
    "DescribeNetworkInterfaces": describe_network_interfaces,
    "CreateNetworkInterface": create_network_interface,
    "AttachNetworkInterface": attach_network_interface,
    "DetachNetworkInterface": detach_network_interface,
    "DeleteNetworkInterface": delete_network_interface,
    "AssignPrivateIpAddresses": assign_private_ip_addresses,
    "UnassignPrivateIpAddresses": unassign_private_ip_addresses,
    "ModifyNetworkInterfaceAttribute": modify_network_interface_attribute,
    "CreateTags": create_tags,
    "DeleteTags": delete_tags,
}


def run(engine: Engine, action: str, p: Params) -> dict[str, Any]:
    handler = ACTIONS.get(action)
    if handler is None:
        raise err("InvalidAction", f"The action {action} is not valid for this web service.")
    with engine.lock:
        engine.tick()
        return handler(Ec2(engine), p)


# --- throttling -------------------------------------------------------------------------------


def bucket_of(action: str, p: Params) -> str:
    """The token bucket a call draws from: a Describe* call without filters, ids or
    paging is "unfiltered and unpaginated" and has its own, smaller bucket."""
    if action.startswith("Describe") and not any(
            k.startswith(("Filter.", "MaxResults", "NextToken")) or
            re.match(r"^[A-Za-z]+Id\.\d+$", k) or k.startswith("InstanceType.")
            for k in p):
        return action + "/unfiltered"
    return action


def throttle_preset() -> dict[str, Rate]:
    """EC2's documented request-rate buckets for the actions this dialect serves."""
    rates: dict[str, Rate] = {}
    for action in ACTIONS:
        if action.startswith("Describe"):
            rates[action] = NON_MUTATING
            rates[action + "/unfiltered"] = UNFILTERED_NON_MUTATING
        else:
            rates[action] = MUTATING
    return rates
