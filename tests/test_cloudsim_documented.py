"""eniway-cloudsim against Alibaba Cloud's own documents, one behaviour per test, through
the official SDK (alibabacloud_ecs20140526). Each test names the document it checks:

- API reference: github.com/AlibabaCloudDocs/ecs at 322eaab82e866a494eeaddb0de02bab1978692d1,
  ``intl.en-US/API Reference/Elastic network interfaces/<Api>.md`` (EN) and
  ``cn.zh-CN/API参考/弹性网卡/<Api>.md`` (ZH, the newer error tables), quoted as
  "<Api> EN" / "<Api> ZH".
- The SDK's parameter docs: ``alibabacloud_ecs20140526/models/_<api>_request.py``.
- Terway's client: github.com/AliyunContainerService/terway,
  ``pkg/aliyun/client/errors/errors.go`` and ``pkg/controller/multi-ip/node/pool.go``.

The operator's reading of each code (eniway_operator/cloud/errors.py) is checked on the
same responses, through the provider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi.exceptions import ClientException

from eniway_cloudsim.admin import Topology
from eniway_operator import testing
from eniway_operator.cloud.base import (
    InvalidParameter,
    InvalidState,
    NetworkInterface,
    NotFound,
    QuotaExceeded,
    VSwitchExhausted,
)

ZONE = "cn-hangzhou-i"


@pytest.fixture
def topo(cloudsim: Any) -> Topology:
    return cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/24", "10.0.1.0/24"]})


@pytest.fixture
def provider(cloudsim: Any) -> Any:
    return cloudsim.provider()


def sdk_error(fn: Callable[[], Any]) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value


def instance(cloudsim: Any, topo: Topology, itype: str = "ecs.g6.large", **kw: Any
             ) -> dict[str, Any]:
    return cloudsim.admin.create_instance(itype, topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id], **kw)


def in_use(provider: Any, eni_id: str) -> NetworkInterface:
    return testing.wait_for(lambda: next((e for e in provider.describe_enis([eni_id])
                                          if e.status == "InUse"), None), 10, f"{eni_id} InUse",
                            0.02)


def attached_eni(cloudsim: Any, topo: Topology, provider: Any, itype: str = "ecs.g6.large"
                 ) -> tuple[dict[str, Any], NetworkInterface]:
    inst = instance(cloudsim, topo, itype)
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    return inst, in_use(provider, eni.eni_id)


def test_seventh_ip_on_a_six_ip_type_is_ipv4_count_exceeded(
        cloudsim: Any, topo: Topology, provider: Any) -> None:
    """AssignPrivateIpAddresses EN/ZH error tables: 403 InvalidOperation.Ipv4CountExceeded
    ("the maximum number of IPv4 addresses has been reached"); the IPs of an InUse ENI are
    limited by its instance type (ecs.g6.large: 6 per ENI, the primary included). Terway
    (pool.go) treats the code as a limit; so does the operator (QuotaExceeded)."""
    _, eni = attached_eni(cloudsim, topo, provider)
    provider.assign_ips(eni.eni_id, 5)
    err = sdk_error(lambda: cloudsim.client().assign_private_ip_addresses(
        ecs.AssignPrivateIpAddressesRequest(region_id=cloudsim.region,
                                            network_interface_id=eni.eni_id,
                                            secondary_private_ip_address_count=1)))
    assert (err.code, err.status_code) == ("InvalidOperation.Ipv4CountExceeded", 403)
    with pytest.raises(QuotaExceeded):
        provider.assign_ips(eni.eni_id, 1)
    assert len(provider.describe_enis([eni.eni_id])[0].private_ips) == 5


def test_attaching_an_eni_with_more_ips_than_the_type_allows(
        cloudsim: Any, topo: Topology, provider: Any) -> None:
    """CreateNetworkInterface ZH / AssignPrivateIpAddresses ZH: 403
    MaxEniPrivateIpsCountExceeded, "the ENI's secondary private IPs exceed the limit"; the
    ENI holds 8 IPs, ecs.g6.large allows 6 per ENI. Nothing changes (still Available)."""
    inst = instance(cloudsim, topo)
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                              secondary_ip_count=7)
    err = sdk_error(lambda: cloudsim.client().attach_network_interface(
        ecs.AttachNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id=eni.eni_id,
                                          instance_id=inst["instance_id"])))
    assert (err.code, err.status_code) == ("MaxEniPrivateIpsCountExceeded", 403)
    with pytest.raises(QuotaExceeded):
        provider.attach_eni(eni.eni_id, inst["instance_id"])
    assert provider.describe_enis([eni.eni_id])[0].status == "Available"


def test_quota_exceeded_private_ip_address_is_vswitch_exhaustion(
        cloudsim: Any, topo: Topology, provider: Any) -> None:
    """RunInstances EN error table: 400 QuotaExceeded.PrivateIpAddress, "Don't have enough
    private IPs in this switch ... Try another vSwitch"; Terway (pool.go) block-lists the
    vSwitch on it as on InvalidVSwitchId.IpNotEnough. The operator reads it as
    VSwitchExhausted (which block-lists the vSwitch), not as an instance limit. The answer
    is the emulator's, injected, carried by the SDK."""
    _, eni = attached_eni(cloudsim, topo, provider)
    cloudsim.admin.add_fault("AssignPrivateIpAddresses", count=1, status=400,
                             code="QuotaExceeded.PrivateIpAddress",
                             message="Don't have enough private IPs in this switch")
    with pytest.raises(VSwitchExhausted) as ei:
        provider.assign_ips(eni.eni_id, 1)
    assert (ei.value.code, ei.value.status) == ("QuotaExceeded.PrivateIpAddress", 400)
    assert not isinstance(ei.value, QuotaExceeded)


def test_region_eni_quota_is_max_eni_count_exceeded(cloudsim: Any, topo: Topology,
                                                     provider: Any) -> None:
    """CreateNetworkInterface EN/ZH error tables: 403 MaxEniCountExceeded, "the maximum
    number of ENIs that can be managed has been reached"."""
    cloudsim.admin.set_quota(1)
    vsw = topo.vswitch_ids(ZONE)[0]
    provider.create_eni(vsw, [topo.security_group_id], {})
    err = sdk_error(lambda: cloudsim.client().create_network_interface(
        ecs.CreateNetworkInterfaceRequest(region_id=cloudsim.region, v_switch_id=vsw,
                                          security_group_ids=[topo.security_group_id])))
    assert (err.code, err.status_code) == ("MaxEniCountExceeded", 403)
    with pytest.raises(QuotaExceeded):
        provider.create_eni(vsw, [topo.security_group_id], {})


def test_six_security_groups_is_joined_group_limit_exceed(cloudsim: Any, topo: Topology,
                                                          provider: Any) -> None:
    """CreateNetworkInterface ZH error table: 400 JoinedGroupLimitExceed, "the number of
    security groups the resource can join has reached the limit" (5 per ENI). The operator
    reads it as a configuration mistake (InvalidParameter)."""
    sgs = [topo.security_group_id] + [
        cloudsim.admin.create_security_group(topo.vpc_id)["security_group_id"]
        for _ in range(5)]
    err = sdk_error(lambda: cloudsim.client().create_network_interface(
        ecs.CreateNetworkInterfaceRequest(region_id=cloudsim.region,
                                          v_switch_id=topo.vswitch_ids(ZONE)[0],
                                          security_group_ids=sgs)))
    assert (err.code, err.status_code) == ("JoinedGroupLimitExceed", 400)
    with pytest.raises(InvalidParameter):
        provider.create_eni(topo.vswitch_ids(ZONE)[0], sgs, {})


def test_attach_to_a_running_instance_that_cannot_hot_plug(cloudsim: Any, topo: Topology,
                                                           provider: Any) -> None:
    """AttachNetworkInterface EN: "When you bind ENIs to instances of some instance types,
    the instances must be in the Stopped state"; its error table: 400
    InvalidOperation.InvalidEcsState, "not supported while the instance is in the current
    state". ecs.t6 is such a type (the table's hot_swap column)."""
    inst = instance(cloudsim, topo, "ecs.t6-c1m1.large")
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    err = sdk_error(lambda: cloudsim.client().attach_network_interface(
        ecs.AttachNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id=eni.eni_id,
                                          instance_id=inst["instance_id"])))
    assert (err.code, err.status_code) == ("InvalidOperation.InvalidEcsState", 400)
    with pytest.raises(InvalidState):
        provider.attach_eni(eni.eni_id, inst["instance_id"])


def test_unassigning_the_primary_ip_is_ip_unassigned(cloudsim: Any, topo: Topology,
                                                     provider: Any) -> None:
    """UnassignPrivateIpAddresses EN: PrivateIpAddress.N are "the secondary private IP
    addresses to be unassigned"; its error table has 403 InvalidIp.IpUnassigned ("the
    specified IP address is not assigned") and no code of its own for a primary IP."""
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                              secondary_ip_count=1)
    err = sdk_error(lambda: cloudsim.client().unassign_private_ip_addresses(
        ecs.UnassignPrivateIpAddressesRequest(region_id=cloudsim.region,
                                              network_interface_id=eni.eni_id,
                                              private_ip_address=[eni.primary_ip])))
    assert (err.code, err.status_code) == ("InvalidIp.IpUnassigned", 403)
    with pytest.raises(NotFound):  # the operator's reading: nothing of that to unassign
        provider.unassign_ips(eni.eni_id, [eni.primary_ip])
    assert provider.describe_enis([eni.eni_id])[0].primary_ip == eni.primary_ip


def test_state_errors_are_http_400(cloudsim: Any, topo: Topology, provider: Any) -> None:
    """Attach/Detach/Assign/Unassign EN error tables: InvalidOperation.InvalidEniState,
    InvalidOperation.InvalidEcsState and InvalidOperation.DetachPrimaryEniNotAllowed are
    all HTTP 400 (not 403)."""
    client = cloudsim.client()
    inst, eni = attached_eni(cloudsim, topo, provider, "ecs.g6.xlarge")  # 3 ENIs
    err = sdk_error(lambda: client.attach_network_interface(  # InUse, not Available
        ecs.AttachNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id=eni.eni_id,
                                          instance_id=inst["instance_id"])))
    assert (err.code, err.status_code) == ("InvalidOperation.InvalidEniState", 400)
    err = sdk_error(lambda: client.delete_network_interface(  # InUse, not Available
        ecs.DeleteNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id=eni.eni_id)))
    assert (err.code, err.status_code) == ("InvalidOperation.InvalidEniState", 400)
    err = sdk_error(lambda: client.detach_network_interface(
        ecs.DetachNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id=inst["primary_eni_id"],
                                          instance_id=inst["instance_id"])))
    assert (err.code, err.status_code) == ("InvalidOperation.DetachPrimaryEniNotAllowed", 400)
    cloudsim.admin.set_settings(attach_delay=30)
    other = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    provider.attach_eni(other.eni_id, inst["instance_id"])  # stays Attaching
    err = sdk_error(lambda: client.assign_private_ip_addresses(
        ecs.AssignPrivateIpAddressesRequest(region_id=cloudsim.region,
                                            network_interface_id=other.eni_id,
                                            secondary_private_ip_address_count=1)))
    assert (err.code, err.status_code) == ("InvalidOperation.InvalidEniState", 400)
    with pytest.raises(InvalidState):
        provider.assign_ips(other.eni_id, 1)


def test_at_most_ten_explicit_ips_at_create(cloudsim: Any, topo: Topology) -> None:
    """CreateNetworkInterface EN: PrivateIpAddress.N "Valid values of N: 0 to 10" (the
    SDK's _create_network_interface_request.py says the same), while
    SecondaryPrivateIpAddressCount goes to 49."""
    client = cloudsim.client()

    def create(n: int) -> Any:
        return client.create_network_interface(ecs.CreateNetworkInterfaceRequest(
            region_id=cloudsim.region, v_switch_id=topo.vswitch_ids(ZONE)[0],
            security_group_ids=[topo.security_group_id],
            private_ip_address=[f"10.0.0.{100 + i}" for i in range(n)]))

    err = sdk_error(lambda: create(11))
    assert err.status_code == 400 and err.code.startswith("InvalidParameter")
    body = create(10).body
    assert len([ip for ip in body.private_ip_sets.private_ip_set if not ip.primary]) == 10
    assert len(cloudsim.admin.state()["enis"]) == 1  # the refused one left nothing


def test_explicit_ips_and_a_count_together_are_a_conflict(cloudsim: Any, topo: Topology
                                                          ) -> None:
    """CreateNetworkInterface EN: "you cannot specify the PrivateIpAddress.N and
    SecondaryPrivateIpAddressCount parameters at the same time"; ZH error table: 400
    InvalidParameter.Conflict."""
    err = sdk_error(lambda: cloudsim.client().create_network_interface(
        ecs.CreateNetworkInterfaceRequest(
            region_id=cloudsim.region, v_switch_id=topo.vswitch_ids(ZONE)[0],
            security_group_ids=[topo.security_group_id], private_ip_address=["10.0.0.100"],
            secondary_private_ip_address_count=2)))
    assert (err.code, err.status_code) == ("InvalidParameter.Conflict", 400)
    assert cloudsim.admin.state()["enis"] == []


def test_explicit_ips_on_an_in_use_eni_are_limited_by_the_type(
        cloudsim: Any, topo: Topology, provider: Any) -> None:
    """AssignPrivateIpAddresses EN/ZH: PrivateIpAddress.N, Available ENI: 1 to 10; InUse
    ENI: "subject to the instance type" (ecs.g6.4xlarge: 20 per ENI), so 15 explicit IPs
    in one call are fine there, and 10 is the bound only for an Available ENI."""
    _, eni = attached_eni(cloudsim, topo, provider, "ecs.g6.4xlarge")
    client = cloudsim.client()
    wanted = [f"10.0.0.{200 + i}" for i in range(15)]
    got = client.assign_private_ip_addresses(ecs.AssignPrivateIpAddressesRequest(
        region_id=cloudsim.region, network_interface_id=eni.eni_id,
        private_ip_address=wanted)).body
    assert sorted(got.assigned_private_ip_addresses_set.private_ip_set.private_ip_address) \
        == sorted(wanted)
    err = sdk_error(lambda: client.assign_private_ip_addresses(  # 16 + 5 > 20
        ecs.AssignPrivateIpAddressesRequest(
            region_id=cloudsim.region, network_interface_id=eni.eni_id,
            private_ip_address=[f"10.0.0.{230 + i}" for i in range(5)])))
    assert (err.code, err.status_code) == ("InvalidOperation.Ipv4CountExceeded", 403)
    free = provider.create_eni(topo.vswitch_ids(ZONE)[1], [topo.security_group_id], {})
    err = sdk_error(lambda: client.assign_private_ip_addresses(
        ecs.AssignPrivateIpAddressesRequest(
            region_id=cloudsim.region, network_interface_id=free.eni_id,
            private_ip_address=[f"10.0.1.{100 + i}" for i in range(11)])))
    assert err.status_code == 400 and err.code.startswith("InvalidParameter")


def test_max_results_above_500_is_taken_as_500(cloudsim: Any) -> None:
    """SDK _describe_network_interfaces_request.py, MaxResults: "If the specified value is
    greater than 500, the default value is 500" (the API reference: 1 to 500)."""
    big = cloudsim.admin.bootstrap({ZONE: ["10.4.0.0/22"]})
    cloudsim.admin.set_quota(600)
    for _ in range(510):  # set-up straight in the region: the SDK reads the result
        cloudsim.sim.engine.create_eni({"VSwitchId": big.vswitch_ids(ZONE)[0],
                                        "SecurityGroupId": big.security_group_id})
    client = cloudsim.client()
    body = client.describe_network_interfaces(ecs.DescribeNetworkInterfacesRequest(
        region_id=cloudsim.region, max_results=1000)).body
    assert len(body.network_interface_sets.network_interface_set) == 500
    assert body.next_token and body.total_count == 510
    rest = client.describe_network_interfaces(ecs.DescribeNetworkInterfacesRequest(
        region_id=cloudsim.region, max_results=1000, next_token=body.next_token)).body
    assert len(rest.network_interface_sets.network_interface_set) == 10
    assert not rest.next_token


def test_a_detach_may_be_re_sent_while_detaching(cloudsim: Any, topo: Topology,
                                                 provider: Any) -> None:
    """DetachNetworkInterface EN: "The ENI must be in the Detaching or InUse state": a
    detach sent again while the first is under way succeeds and changes nothing."""
    inst, eni = attached_eni(cloudsim, topo, provider)
    cloudsim.admin.set_settings(detach_delay=30)
    provider.detach_eni(eni.eni_id, inst["instance_id"])

    def detaching() -> dict[str, Any]:
        return next(e for e in cloudsim.admin.state()["enis"] if e["eni_id"] == eni.eni_id)

    first = detaching()
    assert first["status"] == "Detaching"
    cloudsim.client().detach_network_interface(ecs.DetachNetworkInterfaceRequest(
        region_id=cloudsim.region, network_interface_id=eni.eni_id,
        instance_id=inst["instance_id"]))
    provider.detach_eni(eni.eni_id, inst["instance_id"])
    assert detaching() == first  # same state, same completion time
    other = instance(cloudsim, topo)
    err = sdk_error(lambda: cloudsim.client().detach_network_interface(
        ecs.DetachNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id=eni.eni_id,
                                          instance_id=other["instance_id"])))
    assert (err.code, err.status_code) == ("InvalidOperation.InvalidEniState", 400)
