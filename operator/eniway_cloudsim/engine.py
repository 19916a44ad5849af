"""The emulated region: VPCs, vSwitches, security groups, instances and ENIs, and the
ECS rules that govern them. Transport-free: the HTTP layer (server.py) turns requests
into calls here, and EcsError into ECS error responses.

Attach and detach are asynchronous as in ECS: the call moves the ENI to Attaching or
Detaching and ``tick`` completes the move once the configured delay has passed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import random
import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .catalog import InstanceType, catalog
from .ec2_catalog import limits_table as ec2_limits
from .store import Store

log = logging.getLogger("eniway_cloudsim")

# Figures from the ECS API reference and the SDK's parameter docs
# (alibabacloud_ecs20140526 models); the tests cite each one.
MAX_IPS_PER_CALL = 10  # SecondaryPrivateIpAddressCount, and IPs per Unassign
MAX_IPS_AT_CREATE = 10  # CreateNetworkInterface PrivateIpAddress.N: 0 to 10
MAX_IPS_ASSIGN_AVAILABLE = 10  # AssignPrivateIpAddresses PrivateIpAddress.N, Available ENI
MAX_SECONDARY_IPS_AVAILABLE = 49  # at creation, and on an ENI that is not attached
MAX_RESULTS = 500  # DescribeNetworkInterfaces: a larger MaxResults is taken as 500
MAX_SECURITY_GROUPS = 5
MAX_TAGS = 20
RESERVED_HEAD = 1  # ECS reserves the first address of a vSwitch CIDR...
RESERVED_TAIL = 3  # ...and the last three (the gateway is broadcast - 2)
MAC_OUI = "00:16:3e"  # Alibaba Cloud's OUI

# A VPC's flavour: which cloud's rules its subnets, ids and MACs follow, and which API
# dialect sees it (ecs_api/vpc_api: aliyun; ec2_api: aws).
ALIYUN = "aliyun"
AWS = "aws"
CLOUDS = (ALIYUN, AWS)
# (head, tail) addresses reserved per subnet. EC2 reserves the first four (network,
# router at +1, DNS at +2, future use at +3) and the last one (broadcast).
RESERVED = {ALIYUN: (RESERVED_HEAD, RESERVED_TAIL), AWS: (4, 1)}

ENI_AVAILABLE = "Available"
ENI_ATTACHING = "Attaching"
ENI_INUSE = "InUse"
ENI_DETACHING = "Detaching"

INSTANCE_RUNNING = "Running"
INSTANCE_STOPPED = "Stopped"


class EcsError(Exception):
    """An ECS error response: HTTP status, error code and message, as ECS returns them."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _rand_id(prefix: str, n: int = 20) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(n))


def new_id(prefix: str, cloud: str, n: int = 20) -> str:
    """``prefix`` ("vpc-", "eni-"...) and a random tail: 17 hex digits for EC2
    (vpc-0123456789abcdef0), ``n`` letters and digits for Alibaba Cloud."""
    if cloud == AWS:
        return prefix + secrets.token_hex(9)[:17]
    return _rand_id(prefix, n)


def _now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t if t is not None else time.time()))


@dataclass
class Vpc:
    vpc_id: str
    cidr: str
    created: float
    cloud: str = ALIYUN


@dataclass
class VSwitch:
    vswitch_id: str
    vpc_id: str
    zone_id: str
    cidr: str
    name: str
    created: float
    cloud: str = ALIYUN

    @property
    def gateway(self) -> str:
        net = ipaddress.ip_network(self.cidr)
        if self.cloud == AWS:  # the VPC router is the subnet's network address + 1
            return str(net.network_address + 1)
        return str(net.broadcast_address - 2)

    @property
    def usable(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """The first and last address an ENI may get."""
        net = ipaddress.IPv4Network(self.cidr)
        head, tail = RESERVED[self.cloud]
        return net.network_address + head, net.broadcast_address - tail

    @property
    def capacity(self) -> int:
        head, tail = RESERVED[self.cloud]
        return ipaddress.ip_network(self.cidr).num_addresses - head - tail


@dataclass
class SecurityGroup:
    security_group_id: str
    vpc_id: str
    created: float


@dataclass
class Instance:
    instance_id: str
    instance_type: str
    zone_id: str
    vpc_id: str
    vswitch_id: str
    status: str
    security_group_ids: list[str]
    primary_eni_id: str
    name: str
    created: float
    netns: str = ""
    netns_created: bool = False
    ram_role: str = ""
    metadata_token: str = ""  # the secret in the instance's metadata URL (see metadata.py)


@dataclass
class Eni:
    eni_id: str
    seq: int
    type: str  # Primary | Secondary
    vpc_id: str
    vswitch_id: str
    zone_id: str
    mac: str
    primary_ip: str
    private_ips: list[str]  # secondary IPs, in assignment order
    security_group_ids: list[str]
    tags: dict[str, str]
    status: str
    created: float
    instance_id: str = ""
    device_index: int | None = None
    delete_on_release: bool = False
    description: str = ""
    name: str = ""
    transition_at: float | None = None  # when Attaching/Detaching completes
    attachment_id: str = ""  # set while attached (EC2 names attachments)
    network_card_index: int = 0
    attached_at: float = 0.0
    source_dest_check: bool = True

    @property
    def all_ips(self) -> list[str]:
        return [self.primary_ip, *self.private_ips]


class Network(Protocol):
    """What the engine tells the network builder (netmode.py); a no-op without root."""

    def ensure_vswitch(self, vpc: Vpc, vsw: VSwitch) -> None: ...
    def ensure_instance(self, inst: Instance) -> None: ...
    def release_instance(self, inst: Instance) -> None: ...
    def plug(self, eni: Eni, inst: Instance, vsw: VSwitch) -> None: ...
    def unplug(self, eni: Eni, inst: Instance) -> None: ...
    def set_ips(self, eni: Eni, inst: Instance) -> None: ...


class NullNetwork:
    def ensure_vswitch(self, vpc: Vpc, vsw: VSwitch) -> None:
        pass

    def ensure_instance(self, inst: Instance) -> None:
        pass

    def release_instance(self, inst: Instance) -> None:
        pass

    def plug(self, eni: Eni, inst: Instance, vsw: VSwitch) -> None:
        pass

    def unplug(self, eni: Eni, inst: Instance) -> None:
        pass

    def set_ips(self, eni: Eni, inst: Instance) -> None:
        pass


class GuardedNetwork:
    """Kernel failures are logged, never raised into the API: the cloud's state is the
    truth, and the next rebuild (restart) brings the network back in line with it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name not in ("ensure_vswitch", "ensure_instance", "release_instance", "plug",
                        "unplug", "set_ips"):
            return target

        def call(*args: Any) -> None:
            try:
                target(*args)
            except Exception:
                log.exception("network mode: %s failed", name)

        return call


@dataclass
class Settings:
    region_id: str = "cn-hangzhou"
    eni_quota: int = 100  # secondary ENIs per region (ECS's default quota)
    attach_delay: float = 0.5
    detach_delay: float = 0.5
    # > 0: each attach (detach) takes a delay drawn uniformly between attach_delay
    # (detach_delay) and delay_spread times it (a cloud's attach time varies)
    delay_spread: float = 0.0
    owner_id: int = 1234567890123456
    aws_region: str = "us-east-1"  # the EC2 dialect's region (SigV4 scope, zone names)
    aws_account_id: str = "123456789012"
    extra: dict[str, Any] = field(default_factory=dict)


def as_int(value: str | None, name: str, default: int | None = None,
            lo: int | None = None, hi: int | None = None) -> int:
    if value is None or value == "":
        if default is None:
            raise EcsError(400, f"MissingParameter.{name}", f"The input parameter {name} "
                           "that is mandatory for processing this request is not supplied.")
        return default
    try:
        n = int(value)
    except ValueError:
        raise EcsError(400, f"InvalidParameter.{name}",
                       f"The specified parameter {name} is not valid.") from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise EcsError(400, f"InvalidParameter.{name}",
                       f"The specified parameter {name} is out of range [{lo}, {hi}].")
    return n


def as_bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() == "true"


def repeat_list(params: Mapping[str, str], name: str) -> list[str]:
    """``Name.1``, ``Name.2``... (the RPC flattening of a list), in index order."""
    items: list[tuple[int, str]] = []
    prefix = name + "."
    for k, v in params.items():
        if k.startswith(prefix) and k[len(prefix):].isdigit():
            items.append((int(k[len(prefix):]), v))
    return [v for _, v in sorted(items)]


def tag_list(params: Mapping[str, str]) -> dict[str, str]:
    tags: dict[int, dict[str, str]] = {}
    for k, v in params.items():
        parts = k.split(".")
        if len(parts) == 3 and parts[0] == "Tag" and parts[1].isdigit():
            tags.setdefault(int(parts[1]), {})[parts[2]] = v
    out: dict[str, str] = {}
    for _, t in sorted(tags.items()):
        if t.get("Key"):
            out[t["Key"]] = t.get("Value", "")
    return out


class Engine:
    """The region. Thread-safe: every public method takes the one lock."""

    def __init__(self, settings: Settings, store: Store | None = None,
                 network: Network | None = None,
                 types: Mapping[str, InstanceType] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.net: Network = GuardedNetwork(network) if network is not None else NullNetwork()
        self.types = types if types is not None else catalog()
        # instance types by flavour; the aws table is EC2's (ec2_catalog.py)
        self.cloud_types: dict[str, Mapping[str, InstanceType]] = {
            ALIYUN: self.types, AWS: ec2_limits()}
        self.clock = clock
        self.lock = threading.RLock()
        # Attach and detach delays: the n-th move on the k-th instance created gets the same
        # draw in every run, so runs that differ only in their callers face the same cloud.
        self._order: dict[str, int] = {}
        self._moves: dict[tuple[str, int], int] = {}
        self.vpcs: dict[str, Vpc] = {}
        self.vswitches: dict[str, VSwitch] = {}
        self.sgs: dict[str, SecurityGroup] = {}
        self.instances: dict[str, Instance] = {}
        self.enis: dict[str, Eni] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.used: dict[str, set[str]] = {}  # vSwitch -> IPs in use
        self.seq = 0
        # Checks other parts of the region (EIPs) make before IPs are unassigned from an
        # ENI (the IPs) or the ENI is deleted (None); they raise EcsError to refuse.
        self.ip_guards: list[Callable[[Eni, Sequence[str] | None], None]] = []
        if store is not None:
            self._load()

    # --- persistence ---------------------------------------------------------------

    def _load(self) -> None:
        assert self.store is not None
        # Settings (quota, delays) come from the command line at each start; the saved
        # copy only records what was in effect.
        for row in self.store.load("vpc"):
            self.vpcs[row["vpc_id"]] = Vpc(**row)
        for row in self.store.load("vswitch"):
            self.vswitches[row["vswitch_id"]] = VSwitch(**row)
            self.used.setdefault(row["vswitch_id"], set())
        for row in self.store.load("sg"):
            self.sgs[row["security_group_id"]] = SecurityGroup(**row)
        for row in self.store.load("instance"):
            inst = Instance(**row)
            if not inst.metadata_token:  # state written before metadata URLs had one
                inst.metadata_token = secrets.token_urlsafe(18)
                self._save("instance", inst.instance_id, inst)
            self.instances[inst.instance_id] = inst
            self._order.setdefault(inst.instance_id, len(self._order))
        for row in self.store.load("eni"):
            eni = Eni(**row)
            self.enis[eni.eni_id] = eni
            self.used.setdefault(eni.vswitch_id, set()).update(eni.all_ips)
            self.seq = max(self.seq, eni.seq)
        for row in self.store.load("token"):
            self.tokens[row["key"]] = row

    def _save(self, kind: str, oid: str, obj: Any) -> None:
        if self.store is not None:
            self.store.put(kind, oid, obj if isinstance(obj, dict) else asdict(obj))

    def _drop(self, kind: str, oid: str) -> None:
        if self.store is not None:
            self.store.delete(kind, oid)

    def _delay(self, base: float, kind: str, instance_id: str) -> float:
        spread = self.settings.delay_spread
        if spread <= 1.0 or base <= 0:
            return base
        key = (kind, self._order.setdefault(instance_id, len(self._order)))
        n = self._moves[key] = self._moves.get(key, 0) + 1
        return random.Random(f"{key[0]}:{key[1]}:{n}").uniform(base, base * spread)

    def save_settings(self) -> None:
        s = self.settings
        self._save("settings", "settings", {"eni_quota": s.eni_quota,
                                            "attach_delay": s.attach_delay,
                                            "detach_delay": s.detach_delay,
                                            "delay_spread": s.delay_spread})

    def rebuild_network(self) -> None:
        """Make the kernel match the state (after a restart in network mode)."""
        with self.lock:
            for vsw in self.vswitches.values():
                self.net.ensure_vswitch(self.vpcs[vsw.vpc_id], vsw)
            for inst in self.instances.values():
                self.net.ensure_instance(inst)
            for eni in self.enis.values():
                if eni.status == ENI_INUSE and eni.instance_id in self.instances:
                    inst = self.instances[eni.instance_id]
                    self.net.plug(eni, inst, self.vswitches[eni.vswitch_id])
                    self.net.set_ips(eni, inst)

    # --- lookups -------------------------------------------------------------------

    def limits(self, instance_type: str) -> InstanceType:
        row = self.types.get(instance_type) or self.cloud_types[AWS].get(instance_type)
        if row is None:
            raise EcsError(404, "InvalidInstanceType.NotFound",
                           f"The specified InstanceType {instance_type} does not exist.")
        return row

    def cloud_of(self, vpc_id: str) -> str:
        vpc = self.vpcs.get(vpc_id)
        return vpc.cloud if vpc is not None else ALIYUN

    def _eni(self, eni_id: str | None, cloud: str | None = ALIYUN) -> Eni:
        """``cloud``: the flavour the asking dialect sees (others do not exist for it);
        None for the admin API, which sees all."""
        if not eni_id:
            raise EcsError(400, "MissingParameter.NetworkInterfaceId",
                           "The input parameter NetworkInterfaceId is mandatory.")
        eni = self.enis.get(eni_id)
        if eni is None or (cloud is not None and self.cloud_of(eni.vpc_id) != cloud):
            raise EcsError(404, "InvalidEniId.NotFound",
                           f"The specified NetworkInterfaceId {eni_id} does not exist.")
        return eni

    def _instance(self, instance_id: str | None, cloud: str | None = ALIYUN) -> Instance:
        if not instance_id:
            raise EcsError(400, "MissingParameter.InstanceId",
                           "The input parameter InstanceId is mandatory.")
        inst = self.instances.get(instance_id)
        if inst is None or (cloud is not None and self.cloud_of(inst.vpc_id) != cloud):
            raise EcsError(404, "InvalidInstanceId.NotFound",
                           f"The specified InstanceId {instance_id} does not exist.")
        return inst

    def _vswitch(self, vswitch_id: str | None, cloud: str | None = ALIYUN) -> VSwitch:
        if not vswitch_id:
            raise EcsError(400, "MissingParameter.VSwitchId",
                           "The input parameter VSwitchId is mandatory.")
        vsw = self.vswitches.get(vswitch_id)
        if vsw is None or (cloud is not None and vsw.cloud != cloud):
            raise EcsError(404, "InvalidVSwitchId.NotFound",
                           f"The specified VSwitchId {vswitch_id} does not exist.")
        return vsw

    def check_region(self, region_id: str | None) -> None:
        if region_id and region_id != self.settings.region_id:
            raise EcsError(404, "InvalidRegionId.NotFound",
                           f"The specified RegionId {region_id} does not exist.")

    def _check_sgs(self, sg_ids: Sequence[str], vpc_id: str) -> list[str]:
        sg_ids = list(dict.fromkeys(sg_ids))
        if not sg_ids:
            raise EcsError(400, "MissingParameter.SecurityGroupId",
                           "At least one security group is required.")
        if len(sg_ids) > MAX_SECURITY_GROUPS:
            raise EcsError(400, "JoinedGroupLimitExceed",
                           f"An ENI can join at most {MAX_SECURITY_GROUPS} security groups, "
                           f"not {len(sg_ids)}.")
        for sg_id in sg_ids:
            sg = self.sgs.get(sg_id)
            if sg is None:
                raise EcsError(404, "InvalidSecurityGroupId.NotFound",
                               f"The specified SecurityGroupId {sg_id} does not exist.")
            if sg.vpc_id != vpc_id:
                raise EcsError(403, "InvalidOperation.VpcMismatch",
                               f"The security group {sg_id} is not in the ENI's VPC {vpc_id}.")
        return sg_ids

    # --- addresses -----------------------------------------------------------------

    def available_ips(self, vsw: VSwitch) -> int:
        return vsw.capacity - len(self.used.get(vsw.vswitch_id, ()))

    def _is_assignable(self, vsw: VSwitch, ip: str) -> bool:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        first, last = vsw.usable
        return first <= addr <= last

    def _allocate(self, vsw: VSwitch, count: int, wanted: Sequence[str] = ()) -> list[str]:
        used = self.used.setdefault(vsw.vswitch_id, set())
        if wanted:
            for ip in wanted:
                if not self._is_assignable(vsw, ip):
                    raise EcsError(403, "InvalidVSwitchId.IpInvalid",
                                   f"The IP {ip} is not a usable address of {vsw.cidr}.")
                if ip in used:
                    raise EcsError(403, "InvalidIp.IpAssigned",
                                   f"The IP {ip} is already assigned.")
            if len(set(wanted)) != len(wanted):
                raise EcsError(400, "InvalidParameter.PrivateIpAddress", "Duplicate IPs.")
            return list(wanted)
        if self.available_ips(vsw) < count:
            raise EcsError(403, "InvalidVSwitchId.IpNotEnough",
                           f"The specified VSwitch {vsw.vswitch_id} has not enough IP addresses.")
        out: list[str] = []
        addr, last = vsw.usable
        while len(out) < count and addr <= last:
            s = str(addr)
            if s not in used:
                out.append(s)
            addr += 1
        return out

    def _new_mac(self, cloud: str = ALIYUN) -> str:
        """Alibaba's OUI and 3 random bytes; EC2's locally administered 02: and 5."""
        taken = {e.mac for e in self.enis.values()}
        while True:
            if cloud == AWS:
                mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
            else:
                tail = secrets.token_bytes(3)
                mac = MAC_OUI + ":" + ":".join(f"{b:02x}" for b in tail)
            if mac not in taken:
                return mac

    # --- idempotency ---------------------------------------------------------------

    def idempotent(self, api: str, token: str | None, params: Mapping[str, str],
                   fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """ECS ClientToken: a repeated request with the same token and the same parameters
        gets the first answer and changes nothing; different parameters are refused."""
        if not token:
            return fn()
        key = f"{api}/{token}"
        fp = hashlib.sha256(json.dumps(
            {k: v for k, v in sorted(params.items()) if k not in ("ClientToken",)},
            sort_keys=True).encode()).hexdigest()
        hit = self.tokens.get(key)
        if hit is not None:
            if hit["fingerprint"] != fp:
                raise EcsError(400, "IdempotentParameterMismatch",
                               "The request uses the same client token as a previous, but "
                               "non-identical request.")
            return dict(hit["response"])
        result = fn()
        rec = {"key": key, "fingerprint": fp, "response": result, "at": self.clock()}
        self.tokens[key] = rec
        self._save("token", key, rec)
        return result

    # --- async transitions ---------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        with self.lock:
            due = [e for e in self.enis.values()
                   if e.transition_at is not None and e.transition_at <= now]
            for eni in sorted(due, key=lambda e: e.seq):  # sorting only what moves
                inst = self.instances.get(eni.instance_id)
                if eni.status == ENI_ATTACHING:
                    eni.status = ENI_INUSE
                    eni.transition_at = None
                    if inst is not None:
                        self.net.plug(eni, inst, self.vswitches[eni.vswitch_id])
                        self.net.set_ips(eni, inst)
                elif eni.status == ENI_DETACHING:
                    if inst is not None:
                        self.net.unplug(eni, inst)
                    eni.status = ENI_AVAILABLE
                    eni.instance_id = ""
                    eni.device_index = None
                    eni.transition_at = None
                    eni.attachment_id = ""
                self._save("eni", eni.eni_id, eni)

    # --- admin: topology -----------------------------------------------------------

    def create_vpc(self, cidr: str = "172.16.0.0/12", vpc_id: str = "",
                   cloud: str = ALIYUN) -> Vpc:
        with self.lock:
            if cloud not in CLOUDS:
                raise EcsError(400, "InvalidParameter.Cloud",
                               f"cloud must be one of {', '.join(CLOUDS)}, not {cloud!r}.")
            try:
                net = ipaddress.IPv4Network(cidr)
            except ValueError as e:
                raise EcsError(400, "InvalidCidrBlock.Malformed", str(e)) from None
            vpc = Vpc(vpc_id or new_id("vpc-", cloud, 21), str(net), self.clock(), cloud)
            if vpc.vpc_id in self.vpcs:
                raise EcsError(400, "InvalidVpcId.Duplicate", vpc.vpc_id)
            self.vpcs[vpc.vpc_id] = vpc
            self._save("vpc", vpc.vpc_id, vpc)
            return vpc

    def create_vswitch(self, vpc_id: str, zone_id: str, cidr: str, name: str = "",
                       vswitch_id: str = "") -> VSwitch:
        with self.lock:
            vpc = self.vpcs.get(vpc_id)
            if vpc is None:
                raise EcsError(404, "InvalidVpcId.NotFound", f"VPC {vpc_id} does not exist.")
            try:
                net = ipaddress.IPv4Network(cidr)
            except ValueError as e:
                raise EcsError(400, "InvalidCidrBlock.Malformed", str(e)) from None
            if not net.subnet_of(ipaddress.IPv4Network(vpc.cidr)):
                raise EcsError(400, "InvalidCidrBlock.Malformed",
                               f"{cidr} is not inside the VPC CIDR {vpc.cidr}.")
            smallest = 28 if vpc.cloud == AWS else 29  # EC2 subnets: /16 to /28
            if not 16 <= net.prefixlen <= smallest:
                raise EcsError(400, "InvalidCidrBlock.Malformed",
                               f"A subnet CIDR must be /16 to /{smallest}.")
            for other in self.vswitches.values():
                if other.vpc_id == vpc_id and ipaddress.ip_network(other.cidr).overlaps(net):
                    raise EcsError(400, "InvalidCidrBlock.Overlapped",
                                   f"{cidr} overlaps {other.vswitch_id} ({other.cidr}).")
            if vpc.cloud == AWS and not (zone_id.startswith(self.settings.aws_region)
                                         and zone_id[len(self.settings.aws_region):].isalpha()):
                raise EcsError(400, "InvalidParameter.ZoneId",
                               f"{zone_id!r} is not an availability zone of "
                               f"{self.settings.aws_region} (e.g. {self.settings.aws_region}a).")
            prefix = "subnet-" if vpc.cloud == AWS else "vsw-"
            vsw = VSwitch(vswitch_id or new_id(prefix, vpc.cloud, 21), vpc_id, zone_id,
                          str(net), name, self.clock(), vpc.cloud)
            self.vswitches[vsw.vswitch_id] = vsw
            self.used[vsw.vswitch_id] = set()
            self._save("vswitch", vsw.vswitch_id, vsw)
            self.net.ensure_vswitch(vpc, vsw)
            return vsw

    def create_security_group(self, vpc_id: str) -> SecurityGroup:
        with self.lock:
            if vpc_id not in self.vpcs:
                raise EcsError(404, "InvalidVpcId.NotFound", f"VPC {vpc_id} does not exist.")
            sg = SecurityGroup(new_id("sg-", self.vpcs[vpc_id].cloud), vpc_id, self.clock())
            self.sgs[sg.security_group_id] = sg
            self._save("sg", sg.security_group_id, sg)
            return sg

    def create_instance(self, instance_type: str, vswitch_id: str,
                        security_group_ids: Sequence[str], name: str = "",
                        netns: str = "", status: str = INSTANCE_RUNNING,
                        ram_role: str = "", primary_ip: str = "",
                        instance_id: str = "") -> Instance:
        with self.lock:
            vsw = self._vswitch(vswitch_id, None)
            if instance_type not in self.cloud_types[vsw.cloud]:
                raise EcsError(404, "InvalidInstanceType.NotFound",
                               f"The specified InstanceType {instance_type} does not exist "
                               f"in {vsw.cloud}.")
            sgs = self._check_sgs(security_group_ids, vsw.vpc_id)
            if status not in (INSTANCE_RUNNING, INSTANCE_STOPPED):
                raise EcsError(400, "InvalidParameter.Status", status)
            ips = self._allocate(vsw, 1, [primary_ip] if primary_ip else ())
            iid = instance_id or new_id("i-", vsw.cloud)
            if iid in self.instances:
                raise EcsError(400, "InvalidInstanceId.Duplicate", iid)
            self.seq += 1
            eni = Eni(eni_id=new_id("eni-", vsw.cloud), seq=self.seq, type="Primary",
                      vpc_id=vsw.vpc_id, vswitch_id=vsw.vswitch_id, zone_id=vsw.zone_id,
                      mac=self._new_mac(vsw.cloud), primary_ip=ips[0], private_ips=[],
                      security_group_ids=sgs, tags={}, status=ENI_INUSE, created=self.clock(),
                      instance_id=iid, device_index=0, delete_on_release=True,
                      attachment_id=new_id("eni-attach-", vsw.cloud), attached_at=self.clock())
            inst = Instance(instance_id=iid, instance_type=instance_type, zone_id=vsw.zone_id,
                            vpc_id=vsw.vpc_id, vswitch_id=vsw.vswitch_id, status=status,
                            security_group_ids=sgs, primary_eni_id=eni.eni_id,
                            name=name or iid, created=self.clock(), netns=netns,
                            ram_role=ram_role, metadata_token=secrets.token_urlsafe(18))
            self.used[vsw.vswitch_id].add(eni.primary_ip)
            self.enis[eni.eni_id] = eni
            self.instances[iid] = inst
            self._order.setdefault(iid, len(self._order))
            self.net.ensure_instance(inst)
            self.net.plug(eni, inst, vsw)
            self.net.set_ips(eni, inst)
            self._save("eni", eni.eni_id, eni)
            self._save("instance", iid, inst)
            return inst

    def set_instance_status(self, instance_id: str, action: str) -> Instance:
        with self.lock:
            inst = self._instance(instance_id, None)
            if action == "stop":
                if inst.status != INSTANCE_RUNNING:
                    raise EcsError(403, "IncorrectInstanceStatus",
                                   f"The instance is {inst.status}, not Running.")
                inst.status = INSTANCE_STOPPED
            elif action == "start":
                if inst.status != INSTANCE_STOPPED:
                    raise EcsError(403, "IncorrectInstanceStatus",
                                   f"The instance is {inst.status}, not Stopped.")
                inst.status = INSTANCE_RUNNING
            else:
                raise EcsError(400, "InvalidParameter.Action", action)
            self._save("instance", inst.instance_id, inst)
            return inst

    def release_instance(self, instance_id: str) -> dict[str, list[str]]:
        """ECS DeleteInstance: ENIs flagged DeleteOnRelease go with it, others stay
        (Available)."""
        with self.lock:
            self.tick()
            inst = self._instance(instance_id, None)
            deleted: list[str] = []
            kept: list[str] = []
            for eni in [e for e in self.enis.values() if e.instance_id == instance_id]:
                self.net.unplug(eni, inst)
                if eni.type == "Primary" or eni.delete_on_release:
                    self._delete(eni)
                    deleted.append(eni.eni_id)
                else:
                    eni.status = ENI_AVAILABLE
                    eni.instance_id = ""
                    eni.device_index = None
                    eni.transition_at = None
                    self._save("eni", eni.eni_id, eni)
                    kept.append(eni.eni_id)
            self.net.release_instance(inst)
            del self.instances[instance_id]
            self._drop("instance", instance_id)
            return {"deleted": deleted, "detached": kept}

    def _delete(self, eni: Eni) -> None:
        self.used.get(eni.vswitch_id, set()).difference_update(eni.all_ips)
        del self.enis[eni.eni_id]
        self._drop("eni", eni.eni_id)

    # --- ECS actions ---------------------------------------------------------------

    def create_eni(self, p: Mapping[str, str]) -> Eni:
        with self.lock:
            vsw = self._vswitch(p.get("VSwitchId"))
            sg_ids = repeat_list(p, "SecurityGroupIds")
            if p.get("SecurityGroupId"):
                sg_ids.insert(0, p["SecurityGroupId"])
            sgs = self._check_sgs(sg_ids, vsw.vpc_id)
            tags = tag_list(p)
            if len(tags) > MAX_TAGS:
                raise EcsError(400, "InvalidTagCount", f"At most {MAX_TAGS} tags.")
            n_secondary = as_int(p.get("SecondaryPrivateIpAddressCount"),
                                  "SecondaryPrivateIpAddressCount", 0, 0)
            wanted_secondary = repeat_list(p, "PrivateIpAddress")
            if wanted_secondary and n_secondary:
                raise EcsError(400, "InvalidParameter.Conflict", "Give PrivateIpAddress.N or "
                               "SecondaryPrivateIpAddressCount, not both.")
            if len(wanted_secondary) > MAX_IPS_AT_CREATE:
                raise EcsError(400, "InvalidParameter",
                               f"PrivateIpAddress.N: at most {MAX_IPS_AT_CREATE} at creation, "
                               f"not {len(wanted_secondary)}.")
            if n_secondary > MAX_SECONDARY_IPS_AVAILABLE:
                raise EcsError(403, "MaxEniPrivateIpsCountExceeded",
                               f"An ENI can be created with at most "
                               f"{MAX_SECONDARY_IPS_AVAILABLE} secondary IPs, not {n_secondary}.")
            secondaries = sum(1 for e in self.enis.values() if e.type == "Secondary")
            if secondaries >= self.settings.eni_quota:
                raise EcsError(403, "MaxEniCountExceeded",
                               f"The ENI quota of region {self.settings.region_id} "
                               f"({self.settings.eni_quota}) is used up.")
            return self.new_eni(vsw, sgs, tags, n_secondary, wanted_secondary,
                                p.get("PrimaryIpAddress", ""),
                                delete_on_release=as_bool(p.get("DeleteOnRelease"), False),
                                description=p.get("Description", ""),
                                name=p.get("NetworkInterfaceName", ""))

    def new_eni(self, vsw: VSwitch, sgs: list[str], tags: dict[str, str], n_secondary: int,
                wanted_secondary: Sequence[str], primary_ip: str = "",
                delete_on_release: bool = False, description: str = "",
                name: str = "") -> Eni:
        """A secondary ENI in ``vsw`` once the dialect has checked its own rules: the
        primary IP (given or the first free), then the secondary ones (given or
        ``n_secondary`` free ones)."""
        with self.lock:
            if primary_ip:
                ips = self._allocate(vsw, 1, [primary_ip])
                self.used[vsw.vswitch_id].add(primary_ip)
                try:
                    rest = self._allocate(vsw, n_secondary, wanted_secondary) \
                        if (n_secondary or wanted_secondary) else []
                finally:
                    self.used[vsw.vswitch_id].discard(primary_ip)
                ips += rest
            else:
                if wanted_secondary:
                    rest = self._allocate(vsw, 0, wanted_secondary)
                    self.used[vsw.vswitch_id].update(rest)
                    try:
                        ips = self._allocate(vsw, 1) + rest
                    finally:
                        self.used[vsw.vswitch_id].difference_update(rest)
                else:
                    ips = self._allocate(vsw, 1 + n_secondary)
            self.seq += 1
            eni = Eni(eni_id=new_id("eni-", vsw.cloud), seq=self.seq, type="Secondary",
                      vpc_id=vsw.vpc_id, vswitch_id=vsw.vswitch_id, zone_id=vsw.zone_id,
                      mac=self._new_mac(vsw.cloud), primary_ip=ips[0], private_ips=ips[1:],
                      security_group_ids=sgs, tags=tags, status=ENI_AVAILABLE,
                      created=self.clock(), delete_on_release=delete_on_release,
                      description=description, name=name)
            self.used[vsw.vswitch_id].update(ips)
            self.enis[eni.eni_id] = eni
            self._save("eni", eni.eni_id, eni)
            return eni

    def _check_hot_swap(self, inst: Instance, what: str) -> None:
        if inst.status not in (INSTANCE_RUNNING, INSTANCE_STOPPED):
            raise EcsError(400, "InvalidOperation.InvalidEcsState",
                           f"The instance is {inst.status}: {what} needs Running or Stopped.")
        if inst.status == INSTANCE_RUNNING and not self.limits(inst.instance_type).hot_swap:
            raise EcsError(400, "InvalidOperation.InvalidEcsState",
                           f"Instance type {inst.instance_type} does not support ENI hot "
                           f"swapping: stop the instance to {what} an ENI.")

    def attach(self, eni_id: str | None, instance_id: str | None, cloud: str = ALIYUN,
               device_index: int | None = None, network_card_index: int = 0) -> Eni:
        """``device_index`` None takes the lowest free one (ECS); the caller checks a
        given one is free."""
        with self.lock:
            self.tick()
            eni = self._eni(eni_id, cloud)
            inst = self._instance(instance_id, cloud)
            if eni.type == "Primary":
                raise EcsError(403, "InvalidOperation.InvalidEniType",
                               "A primary ENI cannot be attached.")
            if eni.status != ENI_AVAILABLE:
                raise EcsError(400, "InvalidOperation.InvalidEniState",
                               f"The ENI is {eni.status}, not Available.")
            if eni.vpc_id != inst.vpc_id:
                raise EcsError(403, "InvalidOperation.VpcMismatch",
                               "The ENI and the instance are in different VPCs.")
            if eni.zone_id != inst.zone_id:
                raise EcsError(403, "InvalidOperation.AvailabilityZoneMismatch",
                               "The ENI and the instance are in different zones.")
            self._check_hot_swap(inst, "attach")
            row = self.limits(inst.instance_type)
            mine = [e for e in self.enis.values() if e.instance_id == inst.instance_id]
            if len(mine) >= row.eni_quantity:
                raise EcsError(403, "EniPerInstanceLimitExceeded",
                               f"Instance type {inst.instance_type} allows "
                               f"{row.eni_quantity} ENIs (the primary included).")
            if len(eni.all_ips) > row.eni_private_ip_quantity:
                raise EcsError(403, "MaxEniPrivateIpsCountExceeded",
                               f"The ENI holds {len(eni.all_ips)} IPs; instance type "
                               f"{inst.instance_type} allows {row.eni_private_ip_quantity}.")
            taken = {e.device_index for e in mine}
            eni.device_index = device_index if device_index is not None else next(
                i for i in range(1, 1 + row.eni_quantity) if i not in taken)
            eni.network_card_index = network_card_index
            eni.attachment_id = new_id("eni-attach-", cloud)
            eni.attached_at = self.clock()
            eni.instance_id = inst.instance_id
            eni.status = ENI_ATTACHING
            eni.transition_at = self.clock() + self._delay(
                self.settings.attach_delay, "attach", inst.instance_id)
            self._save("eni", eni.eni_id, eni)
            if self.settings.attach_delay <= 0:
                self.tick()
            return eni

    def detach(self, eni_id: str | None, instance_id: str | None, cloud: str = ALIYUN) -> Eni:
        with self.lock:
            self.tick()
            eni = self._eni(eni_id, cloud)
            inst = self._instance(instance_id, cloud)
            if eni.instance_id != inst.instance_id:
                raise EcsError(400, "InvalidOperation.InvalidEniState",
                               f"The ENI is not attached to {inst.instance_id}.")
            if eni.type == "Primary":
                raise EcsError(400, "InvalidOperation.DetachPrimaryEniNotAllowed",
                               "The primary ENI of an instance cannot be detached.")
            if eni.status == ENI_DETACHING:
                return eni  # a re-sent detach: the first one is under way
            if eni.status != ENI_INUSE:
                raise EcsError(400, "InvalidOperation.InvalidEniState",
                               f"The ENI is {eni.status}, not InUse or Detaching.")
            self._check_hot_swap(inst, "detach")
            eni.status = ENI_DETACHING
            eni.transition_at = self.clock() + self._delay(
                self.settings.detach_delay, "detach", inst.instance_id)
            self._save("eni", eni.eni_id, eni)
            if self.settings.detach_delay <= 0:
                self.tick()
            return eni

    def delete(self, eni_id: str | None, cloud: str = ALIYUN) -> None:
        with self.lock:
            self.tick()
            eni = self._eni(eni_id, cloud)
            if eni.type == "Primary":
                raise EcsError(403, "InvalidOperation.InvalidEniType",
                               "The primary ENI of an instance cannot be deleted.")
            if eni.status != ENI_AVAILABLE:
                raise EcsError(400, "InvalidOperation.InvalidEniState",
                               f"The ENI is {eni.status}; only Available ENIs can be deleted.")
            for guard in self.ip_guards:
                guard(eni, None)
            self._delete(eni)

    def _check_ip_op(self, eni: Eni) -> Instance | None:
        if eni.status not in (ENI_AVAILABLE, ENI_INUSE):
            raise EcsError(400, "InvalidOperation.InvalidEniState",
                           f"The ENI is {eni.status}; IPs change only when Available or InUse.")
        inst = self.instances.get(eni.instance_id) if eni.instance_id else None
        if eni.type == "Primary" and inst is not None and \
                inst.status not in (INSTANCE_RUNNING, INSTANCE_STOPPED):
            raise EcsError(400, "InvalidOperation.InvalidEcsState",
                           f"The instance is {inst.status}.")
        return inst

    def assign(self, p: Mapping[str, str]) -> tuple[Eni, list[str]]:
        with self.lock:
            self.tick()
            eni = self._eni(p.get("NetworkInterfaceId"))
            wanted = repeat_list(p, "PrivateIpAddress")
            count = p.get("SecondaryPrivateIpAddressCount")
            if wanted and count:
                raise EcsError(400, "InvalidParameter.Conflict", "Give PrivateIpAddress.N or "
                               "SecondaryPrivateIpAddressCount, not both.")
            n = len(wanted) if wanted else as_int(count, "SecondaryPrivateIpAddressCount")
            if not wanted and not 1 <= n <= MAX_IPS_PER_CALL:
                raise EcsError(400, "InvalidParameter.SecondaryPrivateIpAddressCount",
                               f"1 to {MAX_IPS_PER_CALL} IPs per call, not {n}.")
            inst = self._check_ip_op(eni)
            attached = eni.status == ENI_INUSE and inst is not None
            if not attached and len(wanted) > MAX_IPS_ASSIGN_AVAILABLE:
                raise EcsError(400, "InvalidParameter",
                               f"PrivateIpAddress.N: at most {MAX_IPS_ASSIGN_AVAILABLE} for an "
                               f"Available ENI, not {len(wanted)}.")
            if attached:
                assert inst is not None
                cap = self.limits(inst.instance_type).eni_private_ip_quantity - 1
                code = "InvalidOperation.Ipv4CountExceeded"
            else:
                cap, code = MAX_SECONDARY_IPS_AVAILABLE, "MaxEniPrivateIpsCountExceeded"
            if len(eni.private_ips) + n > cap:
                raise EcsError(403, code,
                               f"The ENI can hold {cap} secondary IPs; it has "
                               f"{len(eni.private_ips)}, {n} more asked.")
            return eni, self.grow_ips(eni, n, wanted)

    def grow_ips(self, eni: Eni, n: int, wanted: Sequence[str] = ()) -> list[str]:
        """Adds ``wanted`` (or ``n`` free) secondary IPs once the dialect's caps are
        checked; the network follows."""
        with self.lock:
            vsw = self.vswitches[eni.vswitch_id]
            ips = self._allocate(vsw, n, wanted)
            self.used[vsw.vswitch_id].update(ips)
            eni.private_ips.extend(ips)
            self._save("eni", eni.eni_id, eni)
            inst = self.instances.get(eni.instance_id)
            if eni.status == ENI_INUSE and inst is not None:
                self.net.set_ips(eni, inst)
            return ips

    def unassign(self, p: Mapping[str, str]) -> Eni:
        with self.lock:
            self.tick()
            eni = self._eni(p.get("NetworkInterfaceId"))
            ips = repeat_list(p, "PrivateIpAddress")
            if not 1 <= len(ips) <= MAX_IPS_PER_CALL:
                raise EcsError(400, "InvalidParameter.PrivateIpAddress",
                               f"1 to {MAX_IPS_PER_CALL} IPs per call, not {len(ips)}.")
            self._check_ip_op(eni)
            for ip in ips:
                if ip == eni.primary_ip:  # not a secondary IP: ECS says "not assigned"
                    raise EcsError(403, "InvalidIp.IpUnassigned",
                                   f"{ip} is the ENI's primary IP, not a secondary one.")
                if ip not in eni.private_ips:
                    raise EcsError(403, "InvalidIp.IpUnassigned",
                                   f"{ip} is not assigned to {eni.eni_id}.")
            self.shrink_ips(eni, ips)
            return eni

    def shrink_ips(self, eni: Eni, ips: Sequence[str]) -> None:
        """Removes secondary IPs the dialect has checked are the ENI's (EIP guards
        may still refuse); the network follows."""
        with self.lock:
            for guard in self.ip_guards:
                guard(eni, ips)
            gone = set(ips)
            eni.private_ips = [ip for ip in eni.private_ips if ip not in gone]
            self.used[eni.vswitch_id].difference_update(gone)
            self._save("eni", eni.eni_id, eni)
            inst = self.instances.get(eni.instance_id)
            if eni.status == ENI_INUSE and inst is not None:
                self.net.set_ips(eni, inst)

    def modify(self, p: Mapping[str, str]) -> Eni:
        with self.lock:
            eni = self._eni(p.get("NetworkInterfaceId"))
            sgs = repeat_list(p, "SecurityGroupId")
            if sgs:
                eni.security_group_ids = self._check_sgs(sgs, eni.vpc_id)
            if p.get("DeleteOnRelease"):
                eni.delete_on_release = as_bool(p.get("DeleteOnRelease"))
            if "Description" in p:
                eni.description = p["Description"]
            if "NetworkInterfaceName" in p:
                eni.name = p["NetworkInterfaceName"]
            self._save("eni", eni.eni_id, eni)
            return eni

    def filter_enis(self, p: Mapping[str, str]) -> list[Eni]:
        with self.lock:
            self.tick()
            ids = set(repeat_list(p, "NetworkInterfaceId"))
            if len(ids) > 100:
                raise EcsError(400, "InvalidParameter.NetworkInterfaceIds",
                               "At most 100 NetworkInterfaceId.N per call.")
            tags = tag_list(p)
            priv = set(repeat_list(p, "PrivateIpAddress"))
            # by id: only those (a cluster's describes by id must not cost a region's scan)
            candidates = [self.enis[i] for i in ids if i in self.enis] if ids else \
                self.enis.values()
            out = []
            for eni in sorted(candidates, key=lambda e: e.seq):
                if self.cloud_of(eni.vpc_id) != ALIYUN:
                    continue
                if p.get("InstanceId") and eni.instance_id != p["InstanceId"]:
                    continue
                if p.get("Status") and eni.status != p["Status"]:
                    continue
                if p.get("VpcId") and eni.vpc_id != p["VpcId"]:
                    continue
                if p.get("VSwitchId") and eni.vswitch_id != p["VSwitchId"]:
                    continue
                if p.get("Type") and eni.type != p["Type"]:
                    continue
                if p.get("PrimaryIpAddress") and eni.primary_ip != p["PrimaryIpAddress"]:
                    continue
                if p.get("SecurityGroupId") and \
                        p["SecurityGroupId"] not in eni.security_group_ids:
                    continue
                if p.get("NetworkInterfaceName") and eni.name != p["NetworkInterfaceName"]:
                    continue
                if priv and not priv & set(eni.all_ips):
                    continue
                if any(eni.tags.get(k) != v for k, v in tags.items()):
                    continue
                out.append(eni)
            return out

    def filter_instances(self, p: Mapping[str, str]) -> list[Instance]:
        with self.lock:
            ids: set[str] = set()
            if p.get("InstanceIds"):
                try:
                    ids = set(json.loads(p["InstanceIds"]))
                except (ValueError, TypeError):
                    raise EcsError(400, "InvalidInstanceIds.Malformed",
                                   "InstanceIds must be a JSON array.") from None
            out = []
            for inst in sorted(self.instances.values(), key=lambda i: (i.created, i.instance_id)):
                if ids and inst.instance_id not in ids:
                    continue
                if self.cloud_of(inst.vpc_id) != ALIYUN:
                    continue
                for key, attr in (("VpcId", "vpc_id"), ("ZoneId", "zone_id"),
                                  ("Status", "status"), ("InstanceType", "instance_type"),
                                  ("VSwitchId", "vswitch_id")):
                    if p.get(key) and getattr(inst, attr) != p[key]:
                        break
                else:
                    out.append(inst)
            return out

    def filter_vswitches(self, p: Mapping[str, str]) -> list[VSwitch]:
        with self.lock:
            out = []
            for vsw in sorted(self.vswitches.values(), key=lambda v: (v.created, v.vswitch_id)):
                if p.get("VSwitchId") and vsw.vswitch_id != p["VSwitchId"]:
                    continue
                if vsw.cloud != ALIYUN:
                    continue
                if p.get("VpcId") and vsw.vpc_id != p["VpcId"]:
                    continue
                if p.get("ZoneId") and vsw.zone_id != p["ZoneId"]:
                    continue
                out.append(vsw)
            return out

    def filter_security_groups(self, p: Mapping[str, str]) -> list[SecurityGroup]:
        """SecurityGroupIds (a JSON array, at most 100), SecurityGroupId, VpcId."""
        ids: set[str] = set()
        if p.get("SecurityGroupIds"):
            try:
                ids = set(json.loads(p["SecurityGroupIds"]))
            except (ValueError, TypeError):
                raise EcsError(400, "InvalidSecurityGroupIds.Malformed",
                               "SecurityGroupIds must be a JSON array.") from None
            if len(ids) > 100:
                raise EcsError(400, "InvalidParameter.SecurityGroupIds",
                               "At most 100 security group ids.")
        if p.get("SecurityGroupId"):
            ids.add(p["SecurityGroupId"])
        with self.lock:
            return [g for g in sorted(self.sgs.values(),
                                      key=lambda g: (g.created, g.security_group_id))
                    if (not ids or g.security_group_id in ids)
                    and self.cloud_of(g.vpc_id) == ALIYUN
                    and (not p.get("VpcId") or g.vpc_id == p["VpcId"])]

    def filter_types(self, p: Mapping[str, str]) -> list[InstanceType]:
        wanted = set(repeat_list(p, "InstanceTypes"))
        family = p.get("InstanceTypeFamily", "")
        return [r for r in self.types.values()
                if (not wanted or r.instance_type in wanted)
                and (not family or r.family == family)]

    def enis_of(self, instance_id: str) -> list[Eni]:
        with self.lock:
            self.tick()
            return sorted((e for e in self.enis.values() if e.instance_id == instance_id),
                          key=lambda e: e.device_index if e.device_index is not None else 99)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            self.tick()
            return {
                "settings": asdict(self.settings),
                "vpcs": [asdict(v) for v in self.vpcs.values()],
                "vswitches": [dict(asdict(v), available_ips=self.available_ips(v),
                                   gateway=v.gateway) for v in self.vswitches.values()],
                "security_groups": [asdict(s) for s in self.sgs.values()],
                "instances": [asdict(i) for i in self.instances.values()],
                "enis": [asdict(e) for e in sorted(self.enis.values(), key=lambda e: e.seq)],
            }


def iso(t: float) -> str:
    return _now_iso(t)
