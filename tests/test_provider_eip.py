"""The aliyun provider's public IPs (EIPs over the official VPC SDK) against the
emulator: typed errors, retries that never do the work twice, rate limits and the
endpoint rule."""

from __future__ import annotations

from typing import Any

import pytest
from test_provider import FAST, ZONE, calls

from eniway_cloudsim.admin import Topology
from eniway_operator import testing
from eniway_operator.cloud.aliyun import AliyunProvider
from eniway_operator.cloud.aliyun_eip import vpc_endpoint_for
from eniway_operator.cloud.base import (
    InvalidParameter,
    InvalidState,
    NetworkInterface,
    PublicIp,
    QuotaExceeded,
)
from eniway_operator.cloud.ratelimit import Rate

TAGS = {"eniway.io/cluster": "c1", "eniway.io/pod": "default/web-0"}


def in_use_eni(cloudsim: Any, topo: Topology, provider: AliyunProvider, ips: int = 2
               ) -> NetworkInterface:
    inst = cloudsim.admin.create_instance("ecs.g6.xlarge", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id])
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                              secondary_ip_count=ips)
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    return testing.wait_for(lambda: next((e for e in provider.describe_enis([eni.eni_id])
                                          if e.status == "InUse"), None), 10, "InUse", 0.02)


def public_ip(provider: AliyunProvider, allocation_id: str, status: str) -> PublicIp:
    return testing.wait_for(lambda: next((p for p in provider.describe_public_ips(
        [allocation_id]) if p.status == status), None), 10, f"{allocation_id} {status}", 0.02)


@pytest.mark.parametrize(("ecs", "given", "want"), [
    ("", "", "vpc.cn-hangzhou.aliyuncs.com"),
    ("ecs.cn-hangzhou.aliyuncs.com", "", "vpc.cn-hangzhou.aliyuncs.com"),
    ("ecs-vpc.cn-hangzhou.aliyuncs.com", "", "vpc.cn-hangzhou.aliyuncs.com"),
    ("127.0.0.1:8765", "", "127.0.0.1:8765"),
    ("127.0.0.1:8765", "vpc.internal:443", "vpc.internal:443"),
])
def test_vpc_endpoint_rule(ecs: str, given: str, want: str) -> None:
    assert vpc_endpoint_for("cn-hangzhou", ecs, given) == want


def test_allocate_associate_unassociate_release(cloudsim: Any, topo: Topology,
                                                provider: AliyunProvider) -> None:
    eni = in_use_eni(cloudsim, topo, provider)
    got = provider.allocate_public_ip(10, TAGS)
    assert (got.status, got.bandwidth, dict(got.tags)) == ("Available", 10, TAGS)
    provider.associate_public_ip(got.allocation_id, eni.eni_id, eni.private_ips[1])
    used = public_ip(provider, got.allocation_id, "InUse")
    assert (used.eni_id, used.private_ip, used.ip) == (eni.eni_id, eni.private_ips[1], got.ip)
    assert [p.allocation_id for p in provider.describe_public_ips(tags=TAGS)] == \
        [got.allocation_id]
    assert [p.allocation_id for p in provider.describe_public_ips(eni_id=eni.eni_id)] == \
        [got.allocation_id]
    provider.unassociate_public_ip(got.allocation_id, eni.eni_id, eni.private_ips[1])
    free = public_ip(provider, got.allocation_id, "Available")
    assert (free.eni_id, free.private_ip) == ("", "")
    provider.release_public_ip(got.allocation_id)
    assert provider.describe_public_ips([got.allocation_id]) == []
    provider.release_public_ip(got.allocation_id)  # gone already: nothing to do


def test_lost_answers_are_not_acted_on_twice(cloudsim: Any, topo: Topology,
                                             provider: AliyunProvider) -> None:
    """Each call's first answer is lost (the work done, a 500 returned): the retry finds
    the work done (client token, or the state) and succeeds; one EIP exists."""
    eni = in_use_eni(cloudsim, topo, provider)
    for api in ("AllocateEipAddress", "AssociateEipAddress", "UnassociateEipAddress",
                "ReleaseEipAddress"):
        cloudsim.admin.add_fault(api, count=1, phase="after")
    got = provider.allocate_public_ip(5, TAGS)
    assert len(provider.describe_public_ips(tags=TAGS)) == 1
    provider.associate_public_ip(got.allocation_id, eni.eni_id, eni.private_ips[0])
    public_ip(provider, got.allocation_id, "InUse")
    provider.unassociate_public_ip(got.allocation_id, eni.eni_id, eni.private_ips[0])
    public_ip(provider, got.allocation_id, "Available")
    provider.release_public_ip(got.allocation_id)
    assert provider.describe_public_ips(tags=TAGS) == []
    for api in ("AllocateEipAddress", "AssociateEipAddress", "UnassociateEipAddress",
                "ReleaseEipAddress"):
        assert calls(cloudsim, api) == 2, api


def test_errors_are_typed(cloudsim: Any, topo: Topology, provider: AliyunProvider) -> None:
    eni = in_use_eni(cloudsim, topo, provider)
    cloudsim.admin.set_eip_settings(quota=1, associate_delay=0.5)
    first = provider.allocate_public_ip(5, TAGS)
    with pytest.raises(QuotaExceeded) as quota:
        provider.allocate_public_ip(5, TAGS)
    assert quota.value.code == "QuotaExceeded.Eip"
    with pytest.raises(InvalidParameter):
        provider.allocate_public_ip(0, TAGS)
    provider.associate_public_ip(first.allocation_id, eni.eni_id, eni.private_ips[0])
    with pytest.raises(InvalidState) as busy:  # still Associating
        provider.release_public_ip(first.allocation_id)
    assert busy.value.code == "IncorrectEipStatus"
    with pytest.raises(InvalidState) as guarded:
        provider.unassign_ips(eni.eni_id, [eni.private_ips[0]])
    assert guarded.value.code == "InvalidOperation.EipAssociated"


def test_throttled_calls_back_off_and_local_rates_apply(cloudsim: Any, topo: Topology
                                                        ) -> None:
    """The region throttles DescribeEipAddresses: the provider backs off and gets through;
    its own bucket for AllocateEipAddress (1 per minute, burst 1) refuses a second call
    at once when it may not wait."""
    p = cloudsim.provider(retry=FAST, limiter_timeout=0.0,
                          rates={"AllocateEipAddress": Rate(1, 1)})
    cloudsim.admin.add_fault("DescribeEipAddresses", count=2, code="Throttling", status=400)
    assert p.describe_public_ips() == []
    assert p.stats()["retries"]["DescribeEipAddresses"] == 2
    p.allocate_public_ip(5, TAGS)
    with pytest.raises(Exception) as local:
        p.allocate_public_ip(5, TAGS)
    assert getattr(local.value, "code", "") == "Throttling.Local"
    assert calls(cloudsim, "AllocateEipAddress") == 1
