"""The ``aws`` provider: Amazon EC2 through boto3, behind the interface the aliyun one
implements, on the same call loop (callloop.CallLoop: per-API token buckets with EC2's
documented defaults, typed retries, fencing before every attempt). botocore's own retries
are off, so every attempt is the loop's: counted, rate limited and fenced.

Credentials are boto3's standard chain (environment, shared files, web identity / IRSA,
the instance profile through IMDS); nothing here reimplements it.

EC2 differs from ECS where the planner cannot see it, and this module absorbs it:
attaching needs a device index (the lowest free one on network card 0), detaching and
DeleteOnTermination need the attachment id (described first), AssignPrivateIpAddresses
takes no client token, and ModifyNetworkInterfaceAttribute changes one attribute a call.
The per-cloud rules the planner reads come with the limits (``ec2_limits``)."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore import exceptions as bx
from botocore.config import Config
from botocore.parsers import ResponseParserError

from .aws_errors import make_error
from .backoff import RetryPolicy
from .base import (
    CloudError,
    CloudProvider,
    InstanceInfo,
    InstanceLimits,
    InvalidParameter,
    InvalidState,
    NetworkInterface,
    NotFound,
    QuotaExceeded,
    SecurityGroup,
    ServerError,
    Unauthorized,
    VSwitch,
)
from .callloop import CallLoop
from .limits import LimitsCache, bundled_table
from .ratelimit import Rate

T = TypeVar("T")
DATA_FILE = Path(__file__).resolve().parent.parent / "data" / "aws_instance_types.tsv"
IDS_PER_FILTER = 100  # ids per filter value list (EC2 takes 200 values a filter)
MAX_RESULTS = 1000  # page size of DescribeInstances / DescribeNetworkInterfaces
TYPES_PER_CALL = 100  # DescribeInstanceTypes accepts 100 types a call
ATTACH_TRIES = 3  # device indexes tried when another attach takes the one chosen

# EC2's request token buckets ("Request throttling for the Amazon EC2 API"): per API,
# per account and region. The ENI calls have buckets of their own (100 tokens, 5 a
# second); attach and detach are plain mutating actions (50, 5 a second); describes are
# non-mutating (100, 20 a second): always filtered and paginated here, so never the
# smaller bucket of unfiltered describes (50, 10 a second).
EC2_RATES: dict[str, Rate] = {
    "CreateNetworkInterface": Rate(300, 100),
    "DeleteNetworkInterface": Rate(300, 100),
    "AssignPrivateIpAddresses": Rate(300, 100),
    "UnassignPrivateIpAddresses": Rate(300, 100),
    "ModifyNetworkInterfaceAttribute": Rate(300, 100),
    "AttachNetworkInterface": Rate(300, 50),
    "DetachNetworkInterface": Rate(300, 50),
    "DescribeInstances": Rate(1200, 100),
    "DescribeNetworkInterfaces": Rate(1200, 100),
    "DescribeInstanceTypes": Rate(1200, 100),
    "DescribeSubnets": Rate(1200, 100),
    "DescribeSecurityGroups": Rate(1200, 100),
}
EC2_FALLBACK_RATE = Rate(300, 50)  # any other call: a mutating action's bucket

INSTANCE_STATES = {"pending": "Starting", "running": "Running", "stopping": "Stopping",
                   "stopped": "Stopped", "shutting-down": "Stopping",
                   "terminated": "Stopped"}
ATTACHMENT_STATES = {"attaching": "Attaching", "attached": "InUse",
                     "detaching": "Detaching"}
ENI_STATES = {"available": "Available", "attaching": "Attaching", "in-use": "InUse",
              "associated": "InUse", "detaching": "Detaching"}


# --- pure mapping ----------------------------------------------------------------------

def ec2_limits(limits: InstanceLimits) -> InstanceLimits:
    """EC2's rules on a type's figures: any number of IPs per call and at creation (up to
    the ENI's room), pods on the primary ENI's secondary IPs too, and EKS's max pods,
    ENIs x (IPs per ENI - 1) + 2."""
    room = max(limits.ips_per_eni - 1, 1)
    return dataclasses.replace(limits, ips_per_call=room, ips_at_create=room,
                               pods_on_primary_eni=True, max_pods_extra=2)


def limits_of(t: Mapping[str, Any]) -> InstanceLimits | None:
    """From a DescribeInstanceTypes item: ENIs of the default network card (what a
    device index on card 0 can reach), IPv4 addresses per ENI (the primary included)."""
    net = t.get("NetworkInfo") or {}
    default_card = int(net.get("DefaultNetworkCardIndex") or 0)
    enis = int(net.get("MaximumNetworkInterfaces") or 0)
    for card in net.get("NetworkCards") or []:
        if int(card.get("NetworkCardIndex") or 0) == default_card:
            enis = int(card.get("MaximumNetworkInterfaces") or enis)
    ips = int(net.get("Ipv4AddressesPerInterface") or 0)
    if enis < 1 or ips < 1:
        return None
    return ec2_limits(InstanceLimits(str(t["InstanceType"]), enis, ips, True, "api"))


def instance_status(state: str) -> str:
    return INSTANCE_STATES.get(state, state)


def eni_status(status: str, attachment_status: str = "") -> str:
    """EC2's ENI status and attachment status as one of the interface's: an attachment in
    transit or in place says more than the ENI's own status."""
    if attachment_status in ATTACHMENT_STATES:
        return ATTACHMENT_STATES[attachment_status]
    return ENI_STATES.get(status, status)


def on_default_card(attachment: Mapping[str, Any]) -> bool:
    return int(attachment.get("NetworkCardIndex") or 0) == 0


def lowest_free_index(used: Iterable[int]) -> int:
    """The lowest device index not taken (0 is the primary ENI's)."""
    taken = set(used)
    i = 0
    while i in taken:
        i += 1
    return i


def gateway_of(cidr: str) -> str:
    """EC2's VPC router: the subnet's network address plus one."""
    return str(ipaddress.ip_network(cidr, strict=False).network_address + 1)


def to_eni(d: Mapping[str, Any]) -> NetworkInterface:
    """From a CreateNetworkInterface or DescribeNetworkInterfaces item."""
    att = d.get("Attachment") or {}
    attached = att.get("Status") in ATTACHMENT_STATES
    primary_ip = str(d.get("PrivateIpAddress") or "")
    secondary: list[str] = []
    for a in d.get("PrivateIpAddresses") or []:
        if a.get("Primary"):
            primary_ip = str(a["PrivateIpAddress"])
        else:
            secondary.append(str(a["PrivateIpAddress"]))
    device_index = att.get("DeviceIndex") if attached else None
    primary = device_index == 0 and on_default_card(att)
    return NetworkInterface(
        eni_id=str(d["NetworkInterfaceId"]),
        status=eni_status(str(d.get("Status") or ""), str(att.get("Status") or "")),
        type="Primary" if primary else "Secondary", mac=str(d.get("MacAddress") or ""),
        vswitch_id=str(d.get("SubnetId") or ""), vpc_id=str(d.get("VpcId") or ""),
        zone_id=str(d.get("AvailabilityZone") or ""), primary_ip=primary_ip,
        private_ips=tuple(secondary),
        instance_id=str(att.get("InstanceId") or "") if attached else "",
        device_index=int(device_index) if device_index is not None else None,
        security_group_ids=tuple(str(g["GroupId"]) for g in d.get("Groups") or []),
        tags={str(t["Key"]): str(t.get("Value") or "") for t in d.get("TagSet") or []},
        delete_on_release=bool(att.get("DeleteOnTermination")) if attached else False)


def index_taken(err: CloudError) -> bool:
    """An attach refused for its device index or for the instance's ENI count: with a
    fresh look at the instance, another index may do."""
    return err.code == "AttachmentLimitExceeded" or (
        err.code == "InvalidParameterValue" and "device index" in err.message)


def endpoint_url(endpoint: str) -> str | None:
    """``--cloud-endpoint`` as boto3's endpoint_url: a URL as given, ``host:port`` over
    https, empty for the region's own endpoint."""
    if not endpoint:
        return None
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def _filters(values: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """EC2 Filters from {name: values}; a name without values is left out."""
    return [{"Name": k, "Values": list(v)} for k, v in values.items() if v]


class AwsProvider(CallLoop, CloudProvider):
    """EC2 over boto3. Thread-safe (one boto3 client, which is); calls block while their
    API's bucket is empty."""

    def __init__(
        self,
        region_id: str,
        endpoint: str = "",
        session: boto3.session.Session | None = None,
        rates: Mapping[str, Rate] | None = None,
        retry: RetryPolicy | None = None,
        limits_override: Mapping[str, object] | None = None,
        limits_ttl: float = 3600.0,
        read_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        limiter_timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        fence: Callable[[str], None] | None = None,
        max_sleep: float = 1.0,
        on_attempt: Callable[[str, str], None] | None = None,
    ) -> None:
        """``session``: where credentials come from (default: boto3's chain)."""
        CallLoop.__init__(self, rates, retry, limiter_timeout, sleep, fence, max_sleep,
                          on_attempt, default_rates=EC2_RATES,
                          fallback_rate=EC2_FALLBACK_RATE)
        self.region_id = region_id
        self.endpoint = endpoint_url(endpoint)
        config = Config(region_name=region_id, connect_timeout=connect_timeout,
                        read_timeout=read_timeout, user_agent_extra="eniway",
                        retries={"total_max_attempts": 1, "mode": "standard"})
        self.session = session if session is not None else boto3.session.Session()
        self._client = self.session.client("ec2", region_name=region_id,
                                           endpoint_url=self.endpoint, config=config)
        self.limits_cache = LimitsCache(self._fetch_limits, limits_override, limits_ttl,
                                        table=bundled_table(DATA_FILE))
        # DeleteOnTermination belongs to an attachment: a wish made at creation (or
        # while detached) is applied when the ENI is attached.
        self._dot_lock = threading.Lock()
        self._delete_on_attach: dict[str, bool] = {}

    # --- one request ---------------------------------------------------------------------

    def _send(self, api: str, fn: Callable[..., T], request: Any) -> T:
        try:
            return fn(**request)
        except bx.ClientError as e:
            error = e.response.get("Error") or {}
            meta = e.response.get("ResponseMetadata") or {}
            status = meta.get("HTTPStatusCode")
            raise make_error(str(error.get("Code") or "Unknown"),
                             str(error.get("Message") or ""),
                             status if isinstance(status, int) else None,
                             str(meta.get("RequestId") or ""), api) from e
        except (bx.NoCredentialsError, bx.PartialCredentialsError,
                bx.CredentialRetrievalError, bx.TokenRetrievalError,
                bx.UnknownCredentialError) as e:
            raise Unauthorized("InvalidCredentials", str(e), api=api) from e
        except (bx.ConnectionError, bx.HTTPClientError, ResponseParserError) as e:
            raise ServerError("ConnectionError", str(e), api=api) from e
        except bx.ParamValidationError as e:
            raise InvalidParameter("ParamValidation", str(e), api=api) from e
        except bx.BotoCoreError as e:
            raise CloudError(type(e).__name__, str(e), api=api) from e

    def _pages(self, api: str, fn: Callable[..., dict[str, Any]], request: dict[str, Any],
               key: str) -> list[Any]:
        """Every item under ``key`` of every page (NextToken)."""
        out: list[Any] = []
        token = ""
        while True:
            page = self._call(api, fn, {**request, **({"NextToken": token} if token else {})})
            assert page is not None
            out += page.get(key) or []
            token = page.get("NextToken") or ""
            if not token:
                return out

    # --- instances and limits ----------------------------------------------------------

    def describe_instance(self, instance_id: str) -> InstanceInfo:
        found = self.describe_instances([instance_id])
        if not found:
            raise NotFound("InvalidInstanceID.NotFound", f"instance {instance_id} not found",
                           api="DescribeInstances")
        return found[0]

    def describe_instances(self, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        """By an instance-id filter, 100 ids a call and paged: ids missing are absent."""
        out = []
        ids = list(dict.fromkeys(instance_ids))
        for at in range(0, len(ids), IDS_PER_FILTER):
            reservations = self._pages(
                "DescribeInstances", self._client.describe_instances,
                {"Filters": _filters({"instance-id": ids[at:at + IDS_PER_FILTER]}),
                 "MaxResults": MAX_RESULTS}, "Reservations")
            out += [self._instance(i) for r in reservations for i in r.get("Instances") or []]
        return out

    def _instance(self, i: Mapping[str, Any]) -> InstanceInfo:
        nics = i.get("NetworkInterfaces") or []
        primary = next((n for n in nics if (n.get("Attachment") or {}).get("DeviceIndex") == 0
                        and on_default_card(n.get("Attachment") or {})), None)
        return InstanceInfo(
            instance_id=str(i["InstanceId"]), instance_type=str(i.get("InstanceType") or ""),
            region_id=self.region_id,
            zone_id=str((i.get("Placement") or {}).get("AvailabilityZone") or ""),
            vpc_id=str(i.get("VpcId") or ""),
            status=instance_status(str((i.get("State") or {}).get("Name") or "")),
            primary_eni_id=str(primary["NetworkInterfaceId"]) if primary else "",
            vswitch_id=str(i.get("SubnetId") or ""),
            primary_ip=str(i.get("PrivateIpAddress") or ""),
            eni_ids=tuple(str(n["NetworkInterfaceId"]) for n in nics))

    def _fetch_limits(self, instance_type: str) -> InstanceLimits | None:
        return self.fetch_instance_types([instance_type]).get(instance_type)

    def fetch_instance_types(self, instance_types: Sequence[str]) -> dict[str, InstanceLimits]:
        """Limits of several types, 100 a call (also fills the cache). EC2 refuses a whole
        call for one unknown type: such a call is asked again one type at a time, and the
        unknown ones are left out."""
        out: dict[str, InstanceLimits] = {}
        types = list(dict.fromkeys(instance_types))
        for at in range(0, len(types), TYPES_PER_CALL):
            chunk = types[at:at + TYPES_PER_CALL]
            try:
                items = self._types(chunk)
            except InvalidParameter as e:
                if e.code != "InvalidInstanceType":
                    raise
                items = []
                for one in chunk if len(chunk) > 1 else []:
                    try:
                        items += self._types([one])
                    except InvalidParameter as e1:
                        if e1.code != "InvalidInstanceType":
                            raise
            for t in items:
                lim = limits_of(t)
                if lim is not None:
                    out[lim.instance_type] = lim
                    self.limits_cache.put(lim)
        return out

    def _types(self, types: list[str]) -> list[Any]:
        return self._pages("DescribeInstanceTypes", self._client.describe_instance_types,
                           {"InstanceTypes": types}, "InstanceTypes")

    def instance_limits(self, instance_type: str) -> InstanceLimits:
        """The cache's answer (override, API, bundled EC2 table) with EC2's rules."""
        return ec2_limits(self.limits_cache.get(instance_type))

    def describe_vswitches(self, vswitch_ids: Sequence[str]) -> list[VSwitch]:
        """Subnets; a missing one is NotFound, as for ECS."""
        ids = list(dict.fromkeys(vswitch_ids))
        found: dict[str, VSwitch] = {}
        for at in range(0, len(ids), IDS_PER_FILTER):
            for s in self._pages("DescribeSubnets", self._client.describe_subnets,
                                 {"Filters": _filters({"subnet-id": ids[at:at + IDS_PER_FILTER]}),
                                  "MaxResults": MAX_RESULTS}, "Subnets"):
                cidr = str(s["CidrBlock"])
                found[str(s["SubnetId"])] = VSwitch(
                    str(s["SubnetId"]), str(s.get("VpcId") or ""),
                    str(s.get("AvailabilityZone") or ""), cidr,
                    int(s.get("AvailableIpAddressCount") or 0), gateway_ip=gateway_of(cidr))
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound("InvalidSubnetID.NotFound", f"subnets {missing} not found",
                           api="DescribeSubnets")
        return [found[i] for i in ids]

    def describe_security_groups(self, security_group_ids: Sequence[str]
                                 ) -> list[SecurityGroup]:
        """By a group-id filter: a missing group is simply absent."""
        out: list[SecurityGroup] = []
        ids = list(dict.fromkeys(security_group_ids))
        for at in range(0, len(ids), IDS_PER_FILTER):
            for g in self._pages("DescribeSecurityGroups",
                                 self._client.describe_security_groups,
                                 {"Filters": _filters({"group-id": ids[at:at + IDS_PER_FILTER]}),
                                  "MaxResults": MAX_RESULTS}, "SecurityGroups"):
                out.append(SecurityGroup(str(g["GroupId"]), str(g.get("VpcId") or "")))
        return out

    # --- ENIs ----------------------------------------------------------------------------

    def create_eni(self, vswitch_id: str, security_group_ids: Sequence[str],
                   tags: Mapping[str, str], description: str = "",
                   secondary_ip_count: int = 0, client_token: str = "",
                   delete_on_release: bool = False) -> NetworkInterface:
        """Tagged in the creating call (TagSpecifications), so no ENI exists untagged;
        the ClientToken makes a retried create return the first one."""
        if secondary_ip_count < 0:
            raise InvalidParameter("InvalidParameterValue",
                                   f"secondary IPs at creation: {secondary_ip_count} < 0")
        req: dict[str, Any] = {"SubnetId": vswitch_id, "Groups": list(security_group_ids),
                               "ClientToken": client_token or str(uuid.uuid4())}
        if tags:
            req["TagSpecifications"] = [{"ResourceType": "network-interface", "Tags": [
                {"Key": k, "Value": v} for k, v in tags.items()]}]
        if description:
            req["Description"] = description
        if secondary_ip_count:
            req["SecondaryPrivateIpAddressCount"] = secondary_ip_count
        resp = self._call("CreateNetworkInterface", self._client.create_network_interface, req)
        assert resp is not None
        eni = to_eni(resp["NetworkInterface"])
        with self._dot_lock:
            self._delete_on_attach[eni.eni_id] = delete_on_release
        return dataclasses.replace(eni, tags=eni.tags or dict(tags),
                                   delete_on_release=delete_on_release)

    def _eni_state(self, eni_id: str) -> NetworkInterface | None:
        found = self.describe_enis(eni_ids=[eni_id])
        return found[0] if found else None

    def _attachment(self, eni_id: str) -> Mapping[str, Any]:
        """The ENI's attachment as EC2 describes it ({} when detached); NotFound if the
        ENI is gone."""
        found = self._pages("DescribeNetworkInterfaces",
                            self._client.describe_network_interfaces,
                            {"Filters": _filters({"network-interface-id": [eni_id]}),
                             "MaxResults": MAX_RESULTS}, "NetworkInterfaces")
        if not found:
            raise NotFound("InvalidNetworkInterfaceID.NotFound", f"ENI {eni_id} not found",
                           api="DescribeNetworkInterfaces")
        att = found[0].get("Attachment") or {}
        return att if att.get("Status") in ATTACHMENT_STATES else {}

    def attach_eni(self, eni_id: str, instance_id: str) -> None:
        """At the lowest device index free on network card 0, read from the instance's
        ENIs first. Another attach taking that index (or the instance's last slot) in
        the meantime gets a fresh look and another index, while one is left to try."""
        tried: set[int] = set()
        attachment_id = ""
        while True:
            enis = self.describe_enis(instance_id=instance_id)
            mine = next((e for e in enis if e.eni_id == eni_id), None)
            if mine is not None and mine.status in ("Attaching", "InUse"):
                break  # an earlier attempt did it
            index = lowest_free_index(e.device_index for e in enis
                                      if e.device_index is not None)
            try:
                resp = self._call("AttachNetworkInterface",
                                  self._client.attach_network_interface,
                                  {"NetworkInterfaceId": eni_id, "InstanceId": instance_id,
                                   "DeviceIndex": index},
                                  lambda err: self._attached(err, eni_id, instance_id))
            except (InvalidParameter, QuotaExceeded) as err:
                tried.add(index)
                if not index_taken(err) or len(tried) >= ATTACH_TRIES:
                    raise
                fresh = self.describe_enis(instance_id=instance_id)
                if lowest_free_index(e.device_index for e in fresh
                                     if e.device_index is not None) in tried:
                    raise  # nothing changed on the instance: the refusal stands
                continue
            attachment_id = str((resp or {}).get("AttachmentId") or "")
            break
        with self._dot_lock:
            wish = self._delete_on_attach.pop(eni_id, None)
        if wish:
            if not attachment_id:
                attachment_id = str(self._attachment(eni_id).get("AttachmentId") or "")
            if attachment_id:
                self._call("ModifyNetworkInterfaceAttribute",
                           self._client.modify_network_interface_attribute,
                           {"NetworkInterfaceId": eni_id, "Attachment": {
                               "AttachmentId": attachment_id, "DeleteOnTermination": True}})

    def _attached(self, err: CloudError, eni_id: str, instance_id: str) -> bool:
        if not isinstance(err, InvalidState | InvalidParameter):
            return False
        cur = self._eni_state(eni_id)
        return cur is not None and cur.instance_id == instance_id and \
            cur.status in ("Attaching", "InUse")

    def detach_eni(self, eni_id: str, instance_id: str) -> None:
        """Detaches by the attachment id, described first; an ENI already detaching or
        detached is fine, one attached to another instance is InvalidState."""
        att = self._attachment(eni_id)
        if not att or att.get("Status") == "detaching":
            return
        if att.get("InstanceId") and att["InstanceId"] != instance_id:
            raise InvalidState("IncorrectState", f"ENI {eni_id} is attached to "
                               f"{att['InstanceId']}, not {instance_id}",
                               api="DetachNetworkInterface")

        def done(err: CloudError) -> bool:
            if not isinstance(err, InvalidState):
                return False
            cur = self._eni_state(eni_id)
            return cur is None or cur.status in ("Detaching", "Available")

        try:
            self._call("DetachNetworkInterface", self._client.detach_network_interface,
                       {"AttachmentId": att["AttachmentId"]}, done)
        except NotFound:
            return  # the attachment is gone: detached meanwhile

    def delete_eni(self, eni_id: str) -> None:
        with self._dot_lock:
            self._delete_on_attach.pop(eni_id, None)
        self._call("DeleteNetworkInterface", self._client.delete_network_interface,
                   {"NetworkInterfaceId": eni_id}, lambda err: isinstance(err, NotFound))

    def describe_enis(self, eni_ids: Sequence[str] = (), instance_id: str = "",
                      status: str = "", tags: Mapping[str, str] | None = None
                      ) -> list[NetworkInterface]:
        """Filtered (ids, attachment.instance-id, tag:K, status=available) and paged; a
        status in transit is read from the attachment, so it is matched here."""
        filters = _filters({"attachment.instance-id": [instance_id] if instance_id else [],
                            "status": ["available"] if status == "Available" else []})
        filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in (tags or {}).items()]
        ids = list(dict.fromkeys(eni_ids))
        chunks: list[list[str]] = [ids[i:i + IDS_PER_FILTER]
                                   for i in range(0, len(ids), IDS_PER_FILTER)] or [[]]
        out: list[NetworkInterface] = []
        for chunk in chunks:
            out += [to_eni(d) for d in self._pages(
                "DescribeNetworkInterfaces", self._client.describe_network_interfaces,
                {"Filters": filters + _filters({"network-interface-id": chunk}),
                 "MaxResults": MAX_RESULTS}, "NetworkInterfaces")]
        return [e for e in out if not status or e.status == status]

    def assign_ips(self, eni_id: str, count: int, client_token: str = "") -> list[str]:
        """``count`` new secondary IPs (EC2 caps them by the ENI's room, not per call).
        EC2's AssignPrivateIpAddresses takes no client token (``client_token`` is not
        sent): an answer lost and retried may assign twice; a resync adopts the extra IPs
        as free ones. An answer listing more addresses than asked (a peer that echoes the
        ENI's) is narrowed to the ENI's secondary IPs, so the primary never comes back."""
        if count < 1:
            raise InvalidParameter("InvalidParameterValue", f"at least 1 IP, not {count}")
        resp = self._call("AssignPrivateIpAddresses",
                          self._client.assign_private_ip_addresses,
                          {"NetworkInterfaceId": eni_id,
                           "SecondaryPrivateIpAddressCount": count})
        assert resp is not None
        got = [str(a["PrivateIpAddress"]) for a in resp.get("AssignedPrivateIpAddresses") or []]
        if len(got) != count:
            cur = self._eni_state(eni_id)
            secondary = set(cur.private_ips) if cur is not None else set()
            got = [ip for ip in got if ip in secondary]
        return got

    def unassign_ips(self, eni_id: str, ips: Sequence[str]) -> None:
        if not ips:
            raise InvalidParameter("InvalidParameterValue", "no IP to unassign")

        def done(err: CloudError) -> bool:
            if not isinstance(err, InvalidParameter):
                return False
            cur = self._eni_state(eni_id)
            return cur is not None and not set(ips) & set(cur.private_ips)

        self._call("UnassignPrivateIpAddresses", self._client.unassign_private_ip_addresses,
                   {"NetworkInterfaceId": eni_id, "PrivateIpAddresses": list(ips)}, done)

    def modify_eni(self, eni_id: str, security_group_ids: Sequence[str] | None = None,
                   delete_on_release: bool | None = None,
                   description: str | None = None) -> None:
        """One ModifyNetworkInterfaceAttribute per attribute (EC2 takes one a call).
        DeleteOnTermination is the attachment's: on a detached ENI it waits for the
        attach."""
        changes: list[dict[str, Any]] = []
        if security_group_ids:
            changes.append({"Groups": list(security_group_ids)})
        if description is not None:
            changes.append({"Description": {"Value": description}})
        if delete_on_release is not None:
            att = self._attachment(eni_id)
            if att:
                changes.append({"Attachment": {"AttachmentId": att["AttachmentId"],
                                               "DeleteOnTermination": delete_on_release}})
            else:
                with self._dot_lock:
                    self._delete_on_attach[eni_id] = delete_on_release
        for change in changes:
            self._call("ModifyNetworkInterfaceAttribute",
                       self._client.modify_network_interface_attribute,
                       {"NetworkInterfaceId": eni_id, **change})
