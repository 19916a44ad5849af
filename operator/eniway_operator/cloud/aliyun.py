"""The ``aliyun`` provider: Alibaba Cloud ECS through the official SDK
(alibabacloud_ecs20140526), with per-API token buckets, retries whose backoff depends on
the error, client tokens on creating calls, and typed errors. The rate limiter, the
retries and fencing (checked before every attempt) are callloop.CallLoop's."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_openapi.utils_models import Config
from darabonba.runtime import RuntimeOptions
from Tea.exceptions import TeaException, UnretryableException

from .aliyun_eip import AliyunEips, vpc_endpoint_for
from .backoff import RetryPolicy
from .base import (
    MAX_IPS_AT_CREATE,
    MAX_IPS_PER_CALL,
    CloudError,
    CloudProvider,
    InstanceInfo,
    InstanceLimits,
    InvalidParameter,
    InvalidState,
    NetworkInterface,
    NotFound,
    PublicIp,
    SecurityGroup,
    ServerError,
    Unauthorized,
    VSwitch,
)
from .callloop import CallLoop
from .credentials import Credentials, CredentialsError, resolve
from .errors import make_error
from .limits import LimitsCache, bundled_table, family_hot_swap
from .ratelimit import Rate

log = logging.getLogger(__name__)
T = TypeVar("T")
PAGE = 100  # DescribeNetworkInterfaces MaxResults per page, and ids per filter


def _eni(d: Any) -> NetworkInterface:
    """From a CreateNetworkInterface or DescribeNetworkInterfaces item."""
    primary_ip = d.private_ip_address or ""
    ips: list[str] = []
    if d.private_ip_sets and d.private_ip_sets.private_ip_set:
        for s in d.private_ip_sets.private_ip_set:
            if s.primary:
                primary_ip = s.private_ip_address
            else:
                ips.append(s.private_ip_address)
    tags: dict[str, str] = {}
    if d.tags and d.tags.tag:
        tags = {t.tag_key: t.tag_value or "" for t in d.tags.tag}
    sgs: tuple[str, ...] = ()
    if d.security_group_ids and d.security_group_ids.security_group_id:
        sgs = tuple(d.security_group_ids.security_group_id)
    attachment = getattr(d, "attachment", None)
    device_index = attachment.device_index if attachment is not None else None
    return NetworkInterface(
        eni_id=d.network_interface_id, status=d.status or "", type=d.type or "",
        mac=d.mac_address or "", vswitch_id=d.v_switch_id or "", vpc_id=d.vpc_id or "",
        zone_id=d.zone_id or "", primary_ip=primary_ip, private_ips=tuple(ips),
        instance_id=getattr(d, "instance_id", None) or "", device_index=device_index,
        security_group_ids=sgs, tags=tags,
        delete_on_release=bool(getattr(d, "delete_on_release", False)))


class AliyunProvider(CallLoop, CloudProvider):
    """ECS over the SDK. Thread-safe; calls block while their API's bucket is empty."""

    def __init__(
        self,
        region_id: str,
        endpoint: str = "",
        protocol: str = "https",
        credentials: Credentials | None = None,
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
        vpc_endpoint: str = "",
    ) -> None:
        """``vpc_endpoint``: the VPC API (EIPs); see aliyun_eip.vpc_endpoint_for."""
        self.region_id = region_id
        self.endpoint = endpoint or f"ecs.{region_id}.aliyuncs.com"
        self.credentials = credentials if credentials is not None else resolve()
        self._client = Client(Config(credential=self.credentials, endpoint=self.endpoint,
                                     protocol=protocol, region_id=region_id))
        self._runtime = RuntimeOptions(read_timeout=int(read_timeout * 1000),
                                       connect_timeout=int(connect_timeout * 1000))
        CallLoop.__init__(self, rates, retry, limiter_timeout, sleep, fence, max_sleep,
                          on_attempt)
        self.limits_cache = LimitsCache(self._fetch_limits, limits_override, limits_ttl)
        self.eips = AliyunEips(region_id, vpc_endpoint_for(region_id, endpoint, vpc_endpoint),
                               protocol, self.credentials, self._call)

    # --- one request (the loop around it is CallLoop's) ---------------------------------

    def _send(self, api: str, fn: Callable[[Any, RuntimeOptions], T], request: Any) -> T:
        try:
            return fn(request, self._runtime)
        except AlibabaCloudException as e:
            status = e.status_code if isinstance(e.status_code, int) else None
            data = e.data if isinstance(e.data, dict) else {}
            message = data.get("Message") or e.message or ""
            raise make_error(str(e.code), str(message), status, str(e.request_id or ""),
                             api) from e
        except CredentialsError as e:
            raise Unauthorized("InvalidCredentials", str(e), api=api) from e
        except UnretryableException as e:
            inner = getattr(e, "inner_exception", None)
            if isinstance(inner, CredentialsError):
                raise Unauthorized("InvalidCredentials", str(inner), api=api) from e
            raise ServerError("ConnectionError", str(e), api=api) from e
        except OSError as e:
            raise ServerError("ConnectionError", str(e), api=api) from e
        except TeaException as e:
            raise make_error(str(e.code or "ClientError"), str(e.message), None, "",
                             api) from e

    # --- instances and limits ----------------------------------------------------------

    def describe_instance(self, instance_id: str) -> InstanceInfo:
        found = self.describe_instances([instance_id])
        if not found:
            raise NotFound("InvalidInstanceId.NotFound", f"instance {instance_id} not found",
                           api="DescribeInstances")
        return found[0]

    def describe_instances(self, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        """Up to 100 instances a call (InstanceIds, PageSize 100)."""
        out = []
        for at in range(0, len(instance_ids), PAGE):
            req = ecs.DescribeInstancesRequest(
                region_id=self.region_id, instance_ids=json.dumps(list(
                    instance_ids[at:at + PAGE])), page_size=PAGE)
            resp = self._call("DescribeInstances",
                              self._client.describe_instances_with_options, req)
            assert resp is not None
            out += [self._instance(i) for i in
                    (resp.body.instances.instance if resp.body.instances else []) or []]
        return out

    def _instance(self, i: Any) -> InstanceInfo:
        primary_eni = primary_ip = ""
        nics = i.network_interfaces.network_interface if i.network_interfaces else []
        for n in nics or []:
            if n.type == "Primary":
                primary_eni, primary_ip = n.network_interface_id, n.primary_ip_address
        vpc = i.vpc_attributes
        if not primary_ip and vpc and vpc.private_ip_address and vpc.private_ip_address.ip_address:
            primary_ip = vpc.private_ip_address.ip_address[0]
        return InstanceInfo(instance_id=i.instance_id, instance_type=i.instance_type,
                            region_id=i.region_id or self.region_id, zone_id=i.zone_id,
                            vpc_id=vpc.vpc_id if vpc else "", status=i.status,
                            primary_eni_id=primary_eni, vswitch_id=vpc.v_switch_id if vpc else "",
                            primary_ip=primary_ip or "",
                            eni_ids=tuple(n.network_interface_id for n in nics or []))

    def _fetch_limits(self, instance_type: str) -> InstanceLimits | None:
        got = self.fetch_instance_types([instance_type])
        return got.get(instance_type)

    def fetch_instance_types(self, instance_types: Sequence[str]) -> dict[str, InstanceLimits]:
        """Limits of several types in as few calls as possible (also fills the cache)."""
        out: dict[str, InstanceLimits] = {}
        table = bundled_table()
        for i in range(0, len(instance_types), 10):
            chunk = list(instance_types[i:i + 10])
            token = ""
            while True:
                req = ecs.DescribeInstanceTypesRequest(instance_types=chunk,
                                                       next_token=token or None)
                resp = self._call("DescribeInstanceTypes",
                                  self._client.describe_instance_types_with_options, req)
                assert resp is not None
                body = resp.body
                for t in (body.instance_types.instance_type if body.instance_types else []) or []:
                    lim = InstanceLimits(t.instance_type_id, int(t.eni_quantity or 0),
                                         int(t.eni_private_ip_address_quantity or 0),
                                         family_hot_swap(t.instance_type_id, table), "api")
                    if lim.max_enis > 0 and lim.ips_per_eni > 0:
                        out[lim.instance_type] = lim
                        self.limits_cache.put(lim)
                token = body.next_token or ""
                if not token:
                    break
        return out

    def instance_limits(self, instance_type: str) -> InstanceLimits:
        return self.limits_cache.get(instance_type)

    def describe_vswitches(self, vswitch_ids: Sequence[str]) -> list[VSwitch]:
        out = []
        for vid in vswitch_ids:
            req = ecs.DescribeVSwitchesRequest(region_id=self.region_id, v_switch_id=vid)
            resp = self._call("DescribeVSwitches",
                              self._client.describe_vswitches_with_options, req)
            assert resp is not None
            items = resp.body.v_switches.v_switch if resp.body.v_switches else []
            if not items:
                raise NotFound("InvalidVSwitchId.NotFound", f"vSwitch {vid} not found",
                               api="DescribeVSwitches")
            for v in items:
                out.append(VSwitch(v.v_switch_id, v.vpc_id, v.zone_id, v.cidr_block,
                                   int(v.available_ip_address_count or 0)))
        return out

    def describe_security_groups(self, security_group_ids: Sequence[str]
                                 ) -> list[SecurityGroup]:
        out: list[SecurityGroup] = []
        ids = list(dict.fromkeys(security_group_ids))
        for i in range(0, len(ids), 100):
            req = ecs.DescribeSecurityGroupsRequest(
                region_id=self.region_id, security_group_ids=json.dumps(ids[i:i + 100]),
                max_results=100)
            resp = self._call("DescribeSecurityGroups",
                              self._client.describe_security_groups_with_options, req)
            assert resp is not None
            groups = resp.body.security_groups
            for g in (groups.security_group if groups else []) or []:
                out.append(SecurityGroup(g.security_group_id, g.vpc_id or ""))
        return out

    # --- ENIs ------------------------------------------------------------------------

    def create_eni(self, vswitch_id: str, security_group_ids: Sequence[str],
                   tags: Mapping[str, str], description: str = "",
                   secondary_ip_count: int = 0, client_token: str = "",
                   delete_on_release: bool = False) -> NetworkInterface:
        if not 0 <= secondary_ip_count <= MAX_IPS_AT_CREATE:
            raise InvalidParameter("InvalidParameter.SecondaryPrivateIpAddressCount",
                                   f"0..{MAX_IPS_AT_CREATE} secondary IPs at creation")
        req = ecs.CreateNetworkInterfaceRequest(
            region_id=self.region_id, v_switch_id=vswitch_id,
            security_group_ids=list(security_group_ids),
            tag=[ecs.CreateNetworkInterfaceRequestTag(key=k, value=v) for k, v in tags.items()],
            description=description or None,
            secondary_private_ip_address_count=secondary_ip_count or None,
            delete_on_release=delete_on_release,
            client_token=client_token or str(uuid.uuid4()))
        resp = self._call("CreateNetworkInterface",
                          self._client.create_network_interface_with_options, req)
        assert resp is not None
        # the creation answer does not echo DeleteOnRelease
        return dataclasses.replace(_eni(resp.body), delete_on_release=delete_on_release)

    def _eni_state(self, eni_id: str) -> NetworkInterface | None:
        found = self.describe_enis(eni_ids=[eni_id])
        return found[0] if found else None

    def attach_eni(self, eni_id: str, instance_id: str) -> None:
        def done(err: CloudError) -> bool:
            if not isinstance(err, InvalidState):
                return False
            cur = self._eni_state(eni_id)
            return cur is not None and cur.instance_id == instance_id and \
                cur.status in ("Attaching", "InUse")

        req = ecs.AttachNetworkInterfaceRequest(region_id=self.region_id,
                                                network_interface_id=eni_id,
                                                instance_id=instance_id)
        self._call("AttachNetworkInterface",
                   self._client.attach_network_interface_with_options, req, done)

    def detach_eni(self, eni_id: str, instance_id: str) -> None:
        def done(err: CloudError) -> bool:
            if isinstance(err, NotFound):
                return True
            if not isinstance(err, InvalidState):
                return False
            cur = self._eni_state(eni_id)
            return cur is None or cur.status in ("Detaching", "Available")

        req = ecs.DetachNetworkInterfaceRequest(region_id=self.region_id,
                                                network_interface_id=eni_id,
                                                instance_id=instance_id)
        self._call("DetachNetworkInterface",
                   self._client.detach_network_interface_with_options, req, done)

    def delete_eni(self, eni_id: str) -> None:
        req = ecs.DeleteNetworkInterfaceRequest(region_id=self.region_id,
                                                network_interface_id=eni_id)
        self._call("DeleteNetworkInterface",
                   self._client.delete_network_interface_with_options, req,
                   lambda err: isinstance(err, NotFound))

    def describe_enis(self, eni_ids: Sequence[str] = (), instance_id: str = "",
                      status: str = "", tags: Mapping[str, str] | None = None
                      ) -> list[NetworkInterface]:
        id_chunks: list[list[str] | None] = (
            [list(eni_ids[i:i + PAGE]) for i in range(0, len(eni_ids), PAGE)]
            if eni_ids else [None])
        tag_list = [ecs.DescribeNetworkInterfacesRequestTag(key=k, value=v)
                    for k, v in (tags or {}).items()] or None
        out: list[NetworkInterface] = []
        for ids in id_chunks:
            token = ""
            while True:
                req = ecs.DescribeNetworkInterfacesRequest(
                    region_id=self.region_id, network_interface_id=ids,
                    instance_id=instance_id or None, status=status or None, tag=tag_list,
                    max_results=PAGE, next_token=token or None)
                resp = self._call("DescribeNetworkInterfaces",
                                  self._client.describe_network_interfaces_with_options, req)
                assert resp is not None
                body = resp.body
                sets = body.network_interface_sets
                for item in (sets.network_interface_set if sets else []) or []:
                    out.append(_eni(item))
                token = body.next_token or ""
                if not token:
                    break
        return out

    def assign_ips(self, eni_id: str, count: int, client_token: str = "") -> list[str]:
        if not 1 <= count <= MAX_IPS_PER_CALL:
            raise InvalidParameter("InvalidParameter.SecondaryPrivateIpAddressCount",
                                   f"1..{MAX_IPS_PER_CALL} IPs per call, not {count}")
        req = ecs.AssignPrivateIpAddressesRequest(
            region_id=self.region_id, network_interface_id=eni_id,
            secondary_private_ip_address_count=count,
            client_token=client_token or str(uuid.uuid4()))
        resp = self._call("AssignPrivateIpAddresses",
                          self._client.assign_private_ip_addresses_with_options, req)
        assert resp is not None
        s = resp.body.assigned_private_ip_addresses_set
        if s is None or s.private_ip_set is None:
            return []
        return list(s.private_ip_set.private_ip_address or [])

    def unassign_ips(self, eni_id: str, ips: Sequence[str]) -> None:
        if not 1 <= len(ips) <= MAX_IPS_PER_CALL:
            raise InvalidParameter("InvalidParameter.PrivateIpAddress",
                                   f"1..{MAX_IPS_PER_CALL} IPs per call, not {len(ips)}")
        req = ecs.UnassignPrivateIpAddressesRequest(region_id=self.region_id,
                                                    network_interface_id=eni_id,
                                                    private_ip_address=list(ips))

        def done(err: CloudError) -> bool:
            if err.code != "InvalidIp.IpUnassigned":
                return False
            cur = self._eni_state(eni_id)
            return cur is not None and not set(ips) & set(cur.private_ips)

        self._call("UnassignPrivateIpAddresses",
                   self._client.unassign_private_ip_addresses_with_options, req, done)

    def modify_eni(self, eni_id: str, security_group_ids: Sequence[str] | None = None,
                   delete_on_release: bool | None = None,
                   description: str | None = None) -> None:
        req = ecs.ModifyNetworkInterfaceAttributeRequest(
            region_id=self.region_id, network_interface_id=eni_id,
            security_group_id=list(security_group_ids) if security_group_ids else None,
            delete_on_release=delete_on_release, description=description)
        self._call("ModifyNetworkInterfaceAttribute",
                   self._client.modify_network_interface_attribute_with_options, req)

    # --- public IPs (VPC API, aliyun_eip.py) --------------------------------------------

    def allocate_public_ip(self, bandwidth: int, tags: Mapping[str, str],
                           client_token: str = "") -> PublicIp:
        return self.eips.allocate(bandwidth, tags, client_token)

    def associate_public_ip(self, allocation_id: str, eni_id: str, private_ip: str,
                            client_token: str = "") -> None:
        self.eips.associate(allocation_id, eni_id, private_ip, client_token)

    def unassociate_public_ip(self, allocation_id: str, eni_id: str = "",
                              private_ip: str = "") -> None:
        self.eips.unassociate(allocation_id, eni_id, private_ip)

    def release_public_ip(self, allocation_id: str) -> None:
        self.eips.release(allocation_id)

    def describe_public_ips(self, allocation_ids: Sequence[str] = (),
                            tags: Mapping[str, str] | None = None, eni_id: str = ""
                            ) -> list[PublicIp]:
        return self.eips.describe(allocation_ids, tags, eni_id)
