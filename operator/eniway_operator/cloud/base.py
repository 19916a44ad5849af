"""The cloud interface the operator plans against, and the typed errors it acts on.

Modelled on Cilium's pkg/ipam split: pool logic never sees an SDK, only this.
Calls are synchronous (the SDKs are); the operator runs them in worker threads.
"""

from __future__ import annotations

import contextlib
import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MAX_IPS_PER_CALL = 10  # ECS accepts at most 10 IPs per Assign/Unassign call
MAX_IPS_AT_CREATE = 49  # ...but up to 49 secondary IPs on an ENI created or Available


@dataclass(frozen=True)
class InstanceLimits:
    """What an instance type allows. ``max_enis`` includes the primary ENI;
    ``ips_per_eni`` includes each ENI's primary IP."""

    instance_type: str
    max_enis: int
    ips_per_eni: int
    hot_swap: bool = True
    source: str = "api"
    # Cloud rules, not type figures; the provider sets them and the planner reads them
    # here, so no cloud's rule lives in planning code.
    ips_at_create: int = MAX_IPS_AT_CREATE  # secondary IPs accepted by the create call
    ips_per_call: int = MAX_IPS_PER_CALL  # secondary IPs accepted per assign/unassign
    pods_on_primary_eni: bool = False  # EC2: the primary ENI's secondary IPs serve pods
    max_pods_extra: int = 0  # EC2's formula adds 2 for host-network pods (no pod IP)

    @property
    def pod_ips(self) -> int:
        """Pod IPs the node can hold: secondary IPs of the ENIs that serve pods (on ECS,
        Terway's formula: the secondary ENIs; the primary carries the node itself)."""
        enis = self.max_enis if self.pods_on_primary_eni else self.max_enis - 1
        return enis * (self.ips_per_eni - 1)

    @property
    def max_pods(self) -> int:
        """The kubelet's maxPods: pod IPs plus the cloud's allowance for host-network
        pods (EC2: ENIs x (IPs per ENI - 1) + 2)."""
        return self.pod_ips + self.max_pods_extra


@dataclass(frozen=True)
class InstanceInfo:
    instance_id: str
    instance_type: str
    region_id: str
    zone_id: str
    vpc_id: str
    status: str  # Running, Stopped, Starting, Stopping
    primary_eni_id: str = ""
    vswitch_id: str = ""
    primary_ip: str = ""
    eni_ids: tuple[str, ...] = ()  # the ENIs attached (InUse), primary included


@dataclass(frozen=True)
class VSwitch:
    vswitch_id: str
    vpc_id: str
    zone_id: str
    cidr: str
    available_ips: int
    gateway_ip: str = ""  # set by a provider whose cloud's gateway is elsewhere

    @property
    def gateway(self) -> str:
        """The vSwitch (subnet) gateway: ``gateway_ip`` when the provider set it (EC2: the
        subnet's first address but the network's), else ECS's rule, the last usable
        address but two (x.x.x.253 on a /24)."""
        if self.gateway_ip:
            return self.gateway_ip
        net = ipaddress.ip_network(self.cidr)
        return str(net.broadcast_address - 2)


@dataclass(frozen=True)
class SecurityGroup:
    security_group_id: str
    vpc_id: str


@dataclass(frozen=True)
class NetworkInterface:
    eni_id: str
    status: str  # Available, Attaching, InUse, Detaching, Deleting, CreateFailed
    type: str  # Primary or Secondary
    mac: str
    vswitch_id: str
    vpc_id: str
    zone_id: str
    primary_ip: str
    private_ips: tuple[str, ...] = ()  # secondary private IPs, primary excluded
    instance_id: str = ""
    device_index: int | None = None
    security_group_ids: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    delete_on_release: bool = False


@dataclass(frozen=True)
class PublicIp:
    """An elastic (public) IP. ``eni_id`` and ``private_ip`` name what it maps to while
    associated (NAT mode: one private IP of the ENI)."""

    allocation_id: str
    ip: str
    status: str  # Available, Associating, InUse, Unassociating
    bandwidth: int = 0
    eni_id: str = ""
    private_ip: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


# --- errors -------------------------------------------------------------------------


class CloudError(Exception):
    """A failed cloud call. ``code`` is the provider's error code, kept verbatim."""

    retryable = False

    def __init__(self, code: str, message: str, request_id: str = "", api: str = "") -> None:
        super().__init__(f"{api + ': ' if api else ''}{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.api = api
        self.status: int | None = None  # HTTP status when the error came from a response


class Throttled(CloudError):
    retryable = True


class ServerError(CloudError):
    """5xx, timeouts and connection errors: safe to retry (with a client token)."""

    retryable = True


class QuotaExceeded(CloudError):
    """Region ENI quota, or the instance type's ENI / IP limit."""


class VSwitchExhausted(CloudError):
    """The vSwitch has no free address left: pick another one."""


class InvalidState(CloudError):
    """The object is not in a state that allows the call (e.g. attach while Attaching,
    attach on a non-hot-swap instance while Running). Often retryable later."""

    retryable = True


class NotFound(CloudError):
    pass


class InvalidParameter(CloudError):
    pass


class Unauthorized(CloudError):
    """Bad or expired credentials, or a missing permission: retrying cannot help."""


class CloudProvider(ABC):
    """What eniway needs from a cloud. Implementations raise the errors above."""

    @abstractmethod
    def describe_instance(self, instance_id: str) -> InstanceInfo: ...

    def describe_instances(self, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        """Those of ``instance_ids`` that exist. A cloud that describes many instances in
        one call overrides this; here it is one call each."""
        out = []
        for instance_id in instance_ids:
            with contextlib.suppress(NotFound):
                out.append(self.describe_instance(instance_id))
        return out

    @abstractmethod
    def instance_limits(self, instance_type: str) -> InstanceLimits: ...

    @abstractmethod
    def describe_vswitches(self, vswitch_ids: Sequence[str]) -> list[VSwitch]: ...

    def describe_security_groups(self, security_group_ids: Sequence[str]
                                 ) -> list[SecurityGroup]:
        """Those of ``security_group_ids`` that exist (a missing one is simply absent)."""
        raise NotImplementedError

    @abstractmethod
    def create_eni(
        self,
        vswitch_id: str,
        security_group_ids: Sequence[str],
        tags: Mapping[str, str],
        description: str = "",
        secondary_ip_count: int = 0,
        client_token: str = "",
        delete_on_release: bool = False,
    ) -> NetworkInterface: ...

    @abstractmethod
    def attach_eni(self, eni_id: str, instance_id: str) -> None:
        """Starts the attach; the ENI is InUse later (poll describe_enis)."""

    @abstractmethod
    def detach_eni(self, eni_id: str, instance_id: str) -> None:
        """Starts the detach; the ENI is Available later."""

    @abstractmethod
    def delete_eni(self, eni_id: str) -> None: ...

    @abstractmethod
    def describe_enis(
        self,
        eni_ids: Sequence[str] = (),
        instance_id: str = "",
        status: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> list[NetworkInterface]:
        """All matching ENIs (the implementation pages through)."""

    @abstractmethod
    def assign_ips(self, eni_id: str, count: int, client_token: str = "") -> list[str]:
        """Assign ``count`` (1..10) new secondary IPs; returns them."""

    @abstractmethod
    def unassign_ips(self, eni_id: str, ips: Sequence[str]) -> None:
        """Unassign 1..10 secondary IPs."""

    def modify_eni(
        self,
        eni_id: str,
        security_group_ids: Sequence[str] | None = None,
        delete_on_release: bool | None = None,
        description: str | None = None,
    ) -> None:
        """Change an ENI's security groups, DeleteOnRelease flag or description."""
        raise NotImplementedError

    # --- public IPs (optional: a provider without them raises NotImplementedError) ---

    def allocate_public_ip(self, bandwidth: int, tags: Mapping[str, str],
                           client_token: str = "") -> PublicIp:
        """A new public IP, Available, tagged with ``tags``."""
        raise NotImplementedError

    def associate_public_ip(self, allocation_id: str, eni_id: str, private_ip: str,
                            client_token: str = "") -> None:
        """Starts mapping the public IP to ``private_ip`` of ``eni_id`` (NAT mode); it is
        InUse later (poll describe_public_ips)."""
        raise NotImplementedError

    def unassociate_public_ip(self, allocation_id: str, eni_id: str = "",
                              private_ip: str = "") -> None:
        """Starts unmapping; the public IP is Available later."""
        raise NotImplementedError

    def release_public_ip(self, allocation_id: str) -> None:
        """Gives an Available public IP back to the cloud; one already gone is fine."""
        raise NotImplementedError

    def describe_public_ips(self, allocation_ids: Sequence[str] = (),
                            tags: Mapping[str, str] | None = None, eni_id: str = ""
                            ) -> list[PublicIp]:
        """All matching public IPs (the implementation pages through)."""
        raise NotImplementedError
