"""eniway-cloudsim's EIPs (VPC API 2016-04-28) against Alibaba Cloud's own documents,
through the official SDK (alibabacloud_vpc20160428). Each test names what it checks:

- API reference: github.com/AlibabaCloudDocs/eip, ``intl.en-US/API Reference/Elastic IP
  Address/<Api>.md``, quoted as "<Api> EN".
- The user guide there: ``intl.en-US/User Guide/Associate an EIP with a cloud instance/
  Bind an EIP to a secondary ENI/Associate an EIP with a secondary ENI in NAT mode.md``
  ("NAT mode guide") and ``... in cut-through mode.md`` ("cut-through guide"); the SDK's
  parameter docs: ``alibabacloud_vpc20160428/models/_<api>_request.py`` ("SDK docs").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_vpc20160428 import models as vpc

from eniway_cloudsim.admin import Topology
from eniway_operator import testing
from eniway_operator.cloud.base import NetworkInterface

ZONE = "cn-hangzhou-i"


@pytest.fixture
def topo(cloudsim: Any) -> Topology:
    return cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})


@pytest.fixture
def client(cloudsim: Any) -> Any:
    return cloudsim.vpc_client()


def sdk_error(fn: Callable[[], Any]) -> AlibabaCloudException:
    with pytest.raises(AlibabaCloudException) as ei:
        fn()
    return ei.value


def eni_with_ips(cloudsim: Any, topo: Topology, ips: int, attach: bool = True
                 ) -> NetworkInterface:
    """A secondary ENI (attached to a new instance when ``attach``) with ``ips``
    secondary IPs, made through the ECS SDK (the operator's provider)."""
    provider = cloudsim.provider()
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                              secondary_ip_count=ips)
    if attach:
        inst = cloudsim.admin.create_instance("ecs.g6.xlarge", topo.vswitch_ids(ZONE)[0],
                                              [topo.security_group_id])
        provider.attach_eni(eni.eni_id, inst["instance_id"])
        return testing.wait_for(lambda: next((e for e in provider.describe_enis([eni.eni_id])
                                              if e.status == "InUse"), None),
                                10, "ENI InUse", 0.02)
    return eni


def allocate(cloudsim: Any, client: Any, **kw: Any) -> Any:
    return client.allocate_eip_address(
        vpc.AllocateEipAddressRequest(region_id=cloudsim.region, **kw)).body


def describe(cloudsim: Any, client: Any, **kw: Any) -> list[Any]:
    body = client.describe_eip_addresses(
        vpc.DescribeEipAddressesRequest(region_id=cloudsim.region, **kw)).body
    return list(body.eip_addresses.eip_address or [])


def associate(cloudsim: Any, client: Any, allocation_id: str, eni_id: str,
              private_ip: str | None = None, mode: str | None = None,
              instance_type: str = "NetworkInterface") -> Any:
    return client.associate_eip_address(vpc.AssociateEipAddressRequest(
        region_id=cloudsim.region, allocation_id=allocation_id, instance_id=eni_id,
        instance_type=instance_type, private_ip_address=private_ip, mode=mode))


def status_of(cloudsim: Any, client: Any, allocation_id: str) -> Any:
    return describe(cloudsim, client, allocation_id=allocation_id)[0]


def wait_status(cloudsim: Any, client: Any, allocation_id: str, status: str) -> Any:
    return testing.wait_for(lambda: next(
        (e for e in describe(cloudsim, client, allocation_id=allocation_id)
         if e.status == status), None), 10, f"{allocation_id} {status}", 0.02)


def test_allocate_describes_an_available_eip_with_its_bandwidth_and_tags(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """AllocateEipAddress EN: "an EIP in the Available state is randomly allocated";
    Bandwidth default 5 Mbit/s; answers AllocationId and EipAddress. DescribeEipAddresses
    EN: filters by AllocationId, EipAddress (comma-separated, up to 50), Status; SDK docs:
    Tag.N filters. Tags given at allocation come back on the EIP."""
    a = allocate(cloudsim, client, tag=[vpc.AllocateEipAddressRequestTag(
        key="eniway.io/cluster", value="c1")])
    b = allocate(cloudsim, client, bandwidth="20", internet_charge_type="PayByTraffic")
    assert a.allocation_id.startswith("eip-") and a.eip_address != b.eip_address
    got = status_of(cloudsim, client, a.allocation_id)
    assert (got.status, got.ip_address, got.bandwidth) == ("Available", a.eip_address, "5")
    assert {t.key: t.value for t in got.tags.tag} == {"eniway.io/cluster": "c1"}
    assert status_of(cloudsim, client, b.allocation_id).bandwidth == "20"
    tagged = describe(cloudsim, client, tag=[vpc.DescribeEipAddressesRequestTag(
        key="eniway.io/cluster", value="c1")])
    assert [e.allocation_id for e in tagged] == [a.allocation_id]
    both = describe(cloudsim, client, eip_address=f"{a.eip_address},{b.eip_address}")
    assert {e.allocation_id for e in both} == {a.allocation_id, b.allocation_id}
    assert describe(cloudsim, client, status="InUse") == []


def test_bandwidth_out_of_range_is_invalid_parameter(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """AllocateEipAddress EN error table: 400 InvalidParameter 'Specified value of
    "Bandwidth" is not valid.'; SDK docs: PayByTraffic 1 to 200 Mbit/s, PayByBandwidth 1
    to 500 (PostPaid). Nothing is allocated."""
    for kw in ({"bandwidth": "0"}, {"bandwidth": "201", "internet_charge_type": "PayByTraffic"},
               {"bandwidth": "501"}, {"internet_charge_type": "PayByMood"}):
        err = sdk_error(lambda kw=kw: allocate(cloudsim, client, **kw))
        assert (err.code, err.status_code) == ("InvalidParameter", 400), kw
    assert allocate(cloudsim, client, bandwidth="500").allocation_id
    assert len(describe(cloudsim, client)) == 1


def test_region_quota_is_quota_exceeded_eip(cloudsim: Any, topo: Topology, client: Any
                                            ) -> None:
    """AllocateEipAddress EN error table: 400 QuotaExceeded.Eip "Elastic IP address quota
    exceeded"; a released EIP gives its place back."""
    cloudsim.admin.set_eip_settings(quota=2)
    first = allocate(cloudsim, client)
    allocate(cloudsim, client)
    err = sdk_error(lambda: allocate(cloudsim, client))
    assert (err.code, err.status_code) == ("QuotaExceeded.Eip", 400)
    client.release_eip_address(vpc.ReleaseEipAddressRequest(
        region_id=cloudsim.region, allocation_id=first.allocation_id))
    assert allocate(cloudsim, client).allocation_id


def test_client_token_makes_allocation_idempotent(cloudsim: Any, topo: Topology,
                                                  client: Any) -> None:
    """AllocateEipAddress EN: ClientToken "ensure[s] the idempotence of the request": a
    retried allocation (its answer lost) yields the same EIP, not a second one."""
    one = allocate(cloudsim, client, client_token="tok-1")
    two = allocate(cloudsim, client, client_token="tok-1")
    assert (one.allocation_id, one.eip_address) == (two.allocation_id, two.eip_address)
    assert len(describe(cloudsim, client)) == 1


def test_nat_association_is_asynchronous_and_maps_one_private_ip(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """AssociateEipAddress EN (2016-04-28 docs, async note): "If the EIP is in the
    Associating state, the EIP is being associated ... InUse state, the EIP is
    associated"; InstanceType NetworkInterface is a secondary ENI, Mode NAT the default.
    NAT mode guide: "both the private IP address and public IP address ... are
    available": the ENI keeps its private IPs."""
    cloudsim.admin.set_eip_settings(associate_delay=0.3)
    eni = eni_with_ips(cloudsim, topo, 2)
    eip = allocate(cloudsim, client)
    associate(cloudsim, client, eip.allocation_id, eni.eni_id, eni.private_ips[1])
    assert status_of(cloudsim, client, eip.allocation_id).status == "Associating"
    got = wait_status(cloudsim, client, eip.allocation_id, "InUse")
    assert (got.instance_id, got.instance_type, got.private_ip_address, got.mode) == (
        eni.eni_id, "NetworkInterface", eni.private_ips[1], "NAT")
    by_eni = describe(cloudsim, client, associated_instance_id=eni.eni_id,
                      associated_instance_type="NetworkInterface")
    assert [e.allocation_id for e in by_eni] == [eip.allocation_id]
    still = cloudsim.provider().describe_enis([eni.eni_id])[0]
    assert still.private_ips == eni.private_ips


def test_an_eip_in_use_or_in_transit_cannot_be_associated_again(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """AssociateEipAddress EN error table: 400 IncorrectEipStatus "Current elastic IP
    status does not support this operation"; while Associating "you can only query the
    EIP and cannot perform other operations"."""
    cloudsim.admin.set_eip_settings(associate_delay=0.5)
    eni = eni_with_ips(cloudsim, topo, 2)
    eip = allocate(cloudsim, client)
    associate(cloudsim, client, eip.allocation_id, eni.eni_id, eni.private_ips[0])
    for call in (lambda: associate(cloudsim, client, eip.allocation_id, eni.eni_id,
                                   eni.private_ips[1]),
                 lambda: client.unassociate_eip_address(vpc.UnassociateEipAddressRequest(
                     region_id=cloudsim.region, allocation_id=eip.allocation_id)),
                 lambda: client.release_eip_address(vpc.ReleaseEipAddressRequest(
                     region_id=cloudsim.region, allocation_id=eip.allocation_id))):
        err = sdk_error(call)
        assert (err.code, err.status_code) == ("IncorrectEipStatus", 400)
    wait_status(cloudsim, client, eip.allocation_id, "InUse")
    err = sdk_error(lambda: associate(cloudsim, client, eip.allocation_id, eni.eni_id,
                                      eni.private_ips[1]))
    assert err.code == "IncorrectEipStatus"


def test_a_private_ip_takes_one_eip_and_an_eni_no_more_than_its_ips(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """AssociateEipAddress EN error table: 400 InvalidAssociation.Duplicated "Specified
    instance already is associated". NAT mode guide: "The number of EIPs that can be
    associated with a secondary ENI depends on the number of the private IP addresses of
    the secondary ENI": an ENI with a primary and 2 secondary IPs takes 3, one per IP."""
    cloudsim.admin.set_eip_settings(associate_delay=0)
    eni = eni_with_ips(cloudsim, topo, 2)
    eips = [allocate(cloudsim, client).allocation_id for _ in range(4)]
    associate(cloudsim, client, eips[0], eni.eni_id, eni.private_ips[0])
    err = sdk_error(lambda: associate(cloudsim, client, eips[1], eni.eni_id,
                                      eni.private_ips[0]))
    assert (err.code, err.status_code) == ("InvalidAssociation.Duplicated", 400)
    associate(cloudsim, client, eips[1], eni.eni_id, eni.private_ips[1])
    associate(cloudsim, client, eips[2], eni.eni_id, eni.primary_ip)
    err = sdk_error(lambda: associate(cloudsim, client, eips[3], eni.eni_id))
    assert err.code == "InvalidAssociation.Duplicated"
    assert len(describe(cloudsim, client, associated_instance_id=eni.eni_id)) == 3
    assert status_of(cloudsim, client, eips[3]).status == "Available"


def test_a_private_ip_not_on_that_eni_is_refused(cloudsim: Any, topo: Topology,
                                                 client: Any) -> None:
    """SDK docs, AssociateEipAddress PrivateIpAddress: "If InstanceType is set to
    NetworkInterface ... Enter the private IP address to be associated"; one of another
    ENI is refused (400 InvalidParameter, "The specified parameter is not valid", EN
    error table) and the EIP stays Available. An unknown ENI: 404
    InvalidInstanId.NotFound (the code as the EN table spells it)."""
    a = eni_with_ips(cloudsim, topo, 1)
    b = eni_with_ips(cloudsim, topo, 1)
    eip = allocate(cloudsim, client)
    err = sdk_error(lambda: associate(cloudsim, client, eip.allocation_id, a.eni_id,
                                      b.private_ips[0]))
    assert (err.code, err.status_code) == ("InvalidParameter", 400)
    err = sdk_error(lambda: associate(cloudsim, client, eip.allocation_id, "eni-nope",
                                      a.private_ips[0]))
    assert (err.code, err.status_code) == ("InvalidInstanId.NotFound", 404)
    err = sdk_error(lambda: associate(cloudsim, client, "eip-nope", a.eni_id))
    assert (err.code, err.status_code) == ("InvalidAllocationId.NotFound", 404)
    assert status_of(cloudsim, client, eip.allocation_id).status == "Available"


def test_cut_through_only_on_an_unbound_enis_primary_ip(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """Cut-through guide: "The secondary ENI is not associated with an Elastic Compute
    Service (ECS) instance"; "The EIP ... replaces the private IP address of the secondary
    ENI"; "Each secondary ENI can be associated with only one EIP". A bound ENI is refused
    (400 IncorrectInstanceStatus, EN error table), so is a secondary IP."""
    cloudsim.admin.set_eip_settings(associate_delay=0)
    bound = eni_with_ips(cloudsim, topo, 1)
    free = eni_with_ips(cloudsim, topo, 1, attach=False)
    eips = [allocate(cloudsim, client).allocation_id for _ in range(3)]
    err = sdk_error(lambda: associate(cloudsim, client, eips[0], bound.eni_id,
                                      bound.primary_ip, mode="BINDED"))
    assert (err.code, err.status_code) == ("IncorrectInstanceStatus", 400)
    err = sdk_error(lambda: associate(cloudsim, client, eips[0], free.eni_id,
                                      free.private_ips[0], mode="BINDED"))
    assert (err.code, err.status_code) == ("InvalidParameter", 400)
    associate(cloudsim, client, eips[0], free.eni_id, free.primary_ip, mode="BINDED")
    assert status_of(cloudsim, client, eips[0]).mode == "BINDED"
    for ip, mode in ((free.private_ips[0], "NAT"), (free.primary_ip, "BINDED")):
        err = sdk_error(lambda ip=ip, mode=mode: associate(
            cloudsim, client, eips[1], free.eni_id, ip, mode=mode))
        assert err.code == "InvalidAssociation.Duplicated"


def test_multi_eip_to_eni_mode_is_closed_to_new_users(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """User guide "Associate EIPs with secondary ENIs in multi-EIP to ENI mode (new
    applications are not accepted)": Mode MULTI_BINDED is refused (400
    InvalidParameter)."""
    eni = eni_with_ips(cloudsim, topo, 1)
    eip = allocate(cloudsim, client)
    err = sdk_error(lambda: associate(cloudsim, client, eip.allocation_id, eni.eni_id,
                                      eni.private_ips[0], mode="MULTI_BINDED"))
    assert (err.code, err.status_code) == ("InvalidParameter", 400)


def test_primary_eni_takes_its_one_eip_through_the_instance(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """DescribeEipAddresses EN, AssociatedInstanceType: "You can associate only one EIP
    with each ECS instance"; NetworkInterface means "a secondary ENI" (AssociateEipAddress
    EN), so the primary ENI is refused under that type."""
    cloudsim.admin.set_eip_settings(associate_delay=0)
    inst = cloudsim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id])
    primary = next(e for e in inst["enis"] if e["type"] == "Primary")
    a, b = (allocate(cloudsim, client).allocation_id for _ in range(2))
    err = sdk_error(lambda: associate(cloudsim, client, a, primary["eni_id"]))
    assert err.code == "InvalidParameter"
    associate(cloudsim, client, a, inst["instance_id"], instance_type="EcsInstance")
    got = status_of(cloudsim, client, a)
    assert (got.instance_type, got.private_ip_address) == ("EcsInstance", inst["primary_ip"])
    err = sdk_error(lambda: associate(cloudsim, client, b, inst["instance_id"],
                                      instance_type="EcsInstance"))
    assert (err.code, err.status_code) == ("InvalidAssociation.Duplicated", 400)


def test_unassociate_then_release(cloudsim: Any, topo: Topology, client: Any) -> None:
    """UnassociateEipAddress EN: disassociates (PrivateIpAddress "of the secondary ENI
    from which you want to disassociate"; a wrong one is 400 InvalidBindingStatus); the EIP
    passes through Unassociating (DescribeEipAddresses EN status list) to Available.
    ReleaseEipAddress EN: "Only EIPs in the Available state can be released" (400
    IncorrectEipStatus), then 404 InvalidAllocationId.NotFound."""
    cloudsim.admin.set_eip_settings(associate_delay=0, unassociate_delay=0.3)
    eni = eni_with_ips(cloudsim, topo, 2)
    eip = allocate(cloudsim, client).allocation_id
    associate(cloudsim, client, eip, eni.eni_id, eni.private_ips[0])

    def release() -> Any:
        return client.release_eip_address(vpc.ReleaseEipAddressRequest(
            region_id=cloudsim.region, allocation_id=eip))

    assert sdk_error(release).code == "IncorrectEipStatus"
    err = sdk_error(lambda: client.unassociate_eip_address(vpc.UnassociateEipAddressRequest(
        region_id=cloudsim.region, allocation_id=eip, instance_id=eni.eni_id,
        instance_type="NetworkInterface", private_ip_address=eni.private_ips[1])))
    assert (err.code, err.status_code) == ("InvalidBindingStatus", 400)
    client.unassociate_eip_address(vpc.UnassociateEipAddressRequest(
        region_id=cloudsim.region, allocation_id=eip, instance_id=eni.eni_id,
        instance_type="NetworkInterface", private_ip_address=eni.private_ips[0]))
    assert status_of(cloudsim, client, eip).status == "Unassociating"
    got = wait_status(cloudsim, client, eip, "Available")
    assert (got.instance_id, got.private_ip_address) == ("", "")
    release()
    assert describe(cloudsim, client, allocation_id=eip) == []
    err = sdk_error(release)
    assert (err.code, err.status_code) == ("InvalidAllocationId.NotFound", 404)


def test_an_ip_with_an_eip_is_not_unassigned_nor_its_eni_deleted(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """The emulator's guard for the release order eniway keeps: UnassignPrivateIpAddresses
    (ECS) of an IP that has an EIP, and DeleteNetworkInterface of an ENI carrying one, are
    refused (403 InvalidOperation.EipAssociated) until the EIP is disassociated."""
    cloudsim.admin.set_eip_settings(associate_delay=0, unassociate_delay=0)
    eni = eni_with_ips(cloudsim, topo, 2, attach=False)
    eip = allocate(cloudsim, client).allocation_id
    associate(cloudsim, client, eip, eni.eni_id, eni.private_ips[0])
    ecs_client = cloudsim.client()

    def unassign(ip: str) -> Any:
        return ecs_client.unassign_private_ip_addresses(ecs.UnassignPrivateIpAddressesRequest(
            region_id=cloudsim.region, network_interface_id=eni.eni_id,
            private_ip_address=[ip]))

    def delete() -> Any:
        return ecs_client.delete_network_interface(ecs.DeleteNetworkInterfaceRequest(
            region_id=cloudsim.region, network_interface_id=eni.eni_id))

    for call in (lambda: unassign(eni.private_ips[0]), delete):
        err = sdk_error(call)
        assert (err.code, err.status_code) == ("InvalidOperation.EipAssociated", 403)
    unassign(eni.private_ips[1])  # the IP without an EIP goes
    client.unassociate_eip_address(vpc.UnassociateEipAddressRequest(
        region_id=cloudsim.region, allocation_id=eip))
    unassign(eni.private_ips[0])
    delete()


def test_eips_survive_a_restart(cloudsim_factory: Any, tmp_path: Any) -> None:
    """Persistence as for ECS objects: allocations, associations and tags are in the
    state file; a restarted region answers the same."""
    state = str(tmp_path / "region.db")
    first = cloudsim_factory(state=state, eip_delay=0)
    topo = first.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
    eni = eni_with_ips(first, topo, 1)
    c = first.vpc_client()
    eip = allocate(first, c, tag=[vpc.AllocateEipAddressRequestTag(key="k", value="v")])
    associate(first, c, eip.allocation_id, eni.eni_id, eni.private_ips[0])
    before = status_of(first, c, eip.allocation_id).to_map()
    first.close(teardown_network=False)
    second = cloudsim_factory(state=state)
    after = status_of(second, second.vpc_client(), eip.allocation_id).to_map()
    assert after == before and after["Status"] == "InUse"


def test_throttling_faults_and_signatures_apply_to_the_vpc_api(
        cloudsim: Any, topo: Topology, client: Any) -> None:
    """The VPC front shares the region's gate: a per-API throttle answers Throttling
    (counted under the action's name), an injected fault its code, and a request signed
    with a wrong secret is refused before anything is done."""
    cloudsim.admin.set_throttle("AllocateEipAddress", 0.01, burst=1)
    allocate(cloudsim, client)
    err = sdk_error(lambda: allocate(cloudsim, client))
    assert err.code == "Throttling"
    cloudsim.admin.set_throttle("AllocateEipAddress", None)
    cloudsim.admin.add_fault("DescribeEipAddresses", count=1, code="ServiceUnavailable",
                             status=503)
    err = sdk_error(lambda: describe(cloudsim, client))
    assert (err.code, err.status_code) == ("ServiceUnavailable", 503)
    assert len(describe(cloudsim, client)) == 1
    counts = cloudsim.admin.call_counts()
    assert counts["errors"]["AllocateEipAddress"] == {"Throttling": 1}
    bad = cloudsim.vpc_client(access_key_secret="wrong")
    err = sdk_error(lambda: allocate(cloudsim, bad))
    assert err.code.startswith(("SignatureDoesNotMatch", "InvalidAccessKey"))
    assert len(describe(cloudsim, client)) == 1
