"""Public IPs on Alibaba Cloud: EIPs through the official VPC SDK
(alibabacloud_vpc20160428), associated in NAT mode with one private IP of a secondary
ENI. The calls go through the ECS provider's loop (rate limits per API, back-off by
error, fencing); creating calls carry a client token, and a retry that finds its work
already done counts as success."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from alibabacloud_tea_openapi.utils_models import Config
from alibabacloud_vpc20160428 import models as vpc
from alibabacloud_vpc20160428.client import Client

from .base import CloudError, InvalidParameter, NotFound, PublicIp

Call = Callable[..., Any]
PAGE = 100  # DescribeEipAddresses PageSize maximum
IDS_PER_FILTER = 50  # DescribeEipAddresses AllocationId: up to 50, comma-separated
BANDWIDTH_RANGE = (1, 200)  # PayByTraffic (PostPaid), the metering eniway asks for


def vpc_endpoint_for(region_id: str, ecs_endpoint: str, given: str = "") -> str:
    """The VPC API's endpoint: ``given``; else the ECS endpoint when it is not one of
    Alibaba Cloud's own hosts (an emulator serves both APIs on one address); else
    ``vpc.<region>.aliyuncs.com``."""
    if given:
        return given
    if ecs_endpoint and not ecs_endpoint.rstrip("/").endswith("aliyuncs.com"):
        return ecs_endpoint
    return f"vpc.{region_id}.aliyuncs.com"


def _public_ip(d: Any) -> PublicIp:
    tags: dict[str, str] = {}
    if d.tags and d.tags.tag:
        tags = {t.key: t.value or "" for t in d.tags.tag}
    itype = d.instance_type or ""
    return PublicIp(allocation_id=d.allocation_id, ip=d.ip_address or "",
                    status=d.status or "", bandwidth=int(d.bandwidth or 0),
                    eni_id=(d.instance_id or "") if itype == "NetworkInterface" else "",
                    private_ip=d.private_ip_address or "", tags=tags)


class AliyunEips:
    """The EIP half of the aliyun provider. ``call(api, fn, request, done_on_retry)`` is
    the provider's call loop."""

    def __init__(self, region_id: str, endpoint: str, protocol: str, credential: Any,
                 call: Call) -> None:
        self.region_id = region_id
        self.endpoint = endpoint
        self._client = Client(Config(credential=credential, endpoint=endpoint,
                                     protocol=protocol, region_id=region_id))
        self._call = call

    def allocate(self, bandwidth: int, tags: Mapping[str, str], client_token: str = ""
                 ) -> PublicIp:
        lo, hi = BANDWIDTH_RANGE
        if not lo <= bandwidth <= hi:
            raise InvalidParameter("InvalidParameter.Bandwidth",
                                   f"bandwidth {bandwidth} Mbit/s: {lo} to {hi}")
        req = vpc.AllocateEipAddressRequest(
            region_id=self.region_id, bandwidth=str(bandwidth),
            internet_charge_type="PayByTraffic", instance_charge_type="PostPaid",
            tag=[vpc.AllocateEipAddressRequestTag(key=k, value=v) for k, v in tags.items()],
            client_token=client_token or str(uuid.uuid4()))
        resp = self._call("AllocateEipAddress", self._client.allocate_eip_address_with_options,
                          req)
        assert resp is not None
        return PublicIp(allocation_id=resp.body.allocation_id, ip=resp.body.eip_address or "",
                        status="Available", bandwidth=bandwidth, tags=dict(tags))

    def _state(self, allocation_id: str) -> PublicIp | None:
        found = self.describe([allocation_id])
        return found[0] if found else None

    def associate(self, allocation_id: str, eni_id: str, private_ip: str,
                  client_token: str = "") -> None:
        def done(err: CloudError) -> bool:
            cur = self._state(allocation_id)
            return cur is not None and cur.eni_id == eni_id and \
                cur.private_ip == private_ip and cur.status in ("Associating", "InUse")

        req = vpc.AssociateEipAddressRequest(
            region_id=self.region_id, allocation_id=allocation_id, instance_id=eni_id,
            instance_type="NetworkInterface", private_ip_address=private_ip, mode="NAT",
            client_token=client_token or str(uuid.uuid4()))
        self._call("AssociateEipAddress", self._client.associate_eip_address_with_options,
                   req, done)

    def unassociate(self, allocation_id: str, eni_id: str = "", private_ip: str = ""
                    ) -> None:
        def done(err: CloudError) -> bool:
            if isinstance(err, NotFound):
                return True
            cur = self._state(allocation_id)
            return cur is None or cur.status in ("Unassociating", "Available")

        req = vpc.UnassociateEipAddressRequest(
            region_id=self.region_id, allocation_id=allocation_id,
            instance_id=eni_id or None,
            instance_type="NetworkInterface" if eni_id else None,
            private_ip_address=private_ip or None, client_token=str(uuid.uuid4()))
        self._call("UnassociateEipAddress",
                   self._client.unassociate_eip_address_with_options, req, done)

    def release(self, allocation_id: str) -> None:
        """Idempotent: an EIP already gone is released."""
        req = vpc.ReleaseEipAddressRequest(region_id=self.region_id,
                                           allocation_id=allocation_id)
        try:
            self._call("ReleaseEipAddress", self._client.release_eip_address_with_options,
                       req, lambda err: isinstance(err, NotFound))
        except NotFound:
            return

    def describe(self, allocation_ids: Sequence[str] = (),
                 tags: Mapping[str, str] | None = None, eni_id: str = "") -> list[PublicIp]:
        chunks: list[str | None] = (
            [",".join(allocation_ids[i:i + IDS_PER_FILTER])
             for i in range(0, len(allocation_ids), IDS_PER_FILTER)]
            if allocation_ids else [None])
        tag_list = [vpc.DescribeEipAddressesRequestTag(key=k, value=v)
                    for k, v in (tags or {}).items()] or None
        out: list[PublicIp] = []
        for ids in chunks:
            number = 1
            while True:
                req = vpc.DescribeEipAddressesRequest(
                    region_id=self.region_id, allocation_id=ids, tag=tag_list,
                    associated_instance_id=eni_id or None,
                    associated_instance_type="NetworkInterface" if eni_id else None,
                    page_number=number, page_size=PAGE)
                resp = self._call("DescribeEipAddresses",
                                  self._client.describe_eip_addresses_with_options, req)
                assert resp is not None
                body = resp.body
                items = (body.eip_addresses.eip_address if body.eip_addresses else []) or []
                out.extend(_public_ip(d) for d in items)
                if not items or number * PAGE >= int(body.total_count or 0):
                    break
                number += 1
        return out
