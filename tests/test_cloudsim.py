"""eniway-cloudsim behaves like ECS: every rule, driven through the official SDK (via the
aliyun provider, or the raw SDK client where the provider refuses bad input itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi.exceptions import ClientException

from eniway_cloudsim.admin import AdminError, Topology
from eniway_operator import testing
from eniway_operator.cloud.base import (
    InvalidParameter,
    InvalidState,
    NetworkInterface,
    NotFound,
    QuotaExceeded,
    VSwitchExhausted,
)
from eniway_operator.cloud.limits import bundled_table

ZONE = "cn-hangzhou-i"
ZONE_B = "cn-hangzhou-j"


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return testing.wait_for(pred, timeout, what, 0.02)


@pytest.fixture
def topo(cloudsim: Any) -> Topology:
    return cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/24", "10.0.1.0/24"],
                                     ZONE_B: ["10.0.2.0/24"]})


@pytest.fixture
def provider(cloudsim: Any) -> Any:
    return cloudsim.provider()


def make_instance(cloudsim: Any, topo: Topology, itype: str = "ecs.g6.xlarge",
                  zone: str = ZONE, **kw: Any) -> dict[str, Any]:
    return cloudsim.admin.create_instance(itype, topo.vswitch_ids(zone)[0],
                                          [topo.security_group_id], **kw)


def in_use(provider: Any, eni_id: str) -> NetworkInterface:
    return wait_for(lambda: next((e for e in provider.describe_enis([eni_id])
                                  if e.status == "InUse"), None), what=f"{eni_id} InUse")


def status_of(provider: Any, eni_id: str) -> str:
    return provider.describe_enis([eni_id])[0].status


def sdk_error(fn: Callable[[], Any]) -> ClientException:
    with pytest.raises(ClientException) as ei:
        fn()
    return ei.value


# --- limits from the data table ---------------------------------------------------------


def test_instance_types_come_from_the_table(provider: Any) -> None:
    got = provider.fetch_instance_types(["ecs.g6.large", "ecs.g7.xlarge", "ecs.t6-c1m1.large"])
    assert (got["ecs.g6.large"].max_enis, got["ecs.g6.large"].ips_per_eni) == (2, 6)
    table = bundled_table()
    for t in got:
        assert (got[t].max_enis, got[t].ips_per_eni) == (table[t].eni_quantity,
                                                         table[t].eni_private_ip_quantity)
    assert got["ecs.t6-c1m1.large"].hot_swap is False
    assert got["ecs.g6.large"].hot_swap is True
    assert all(v.source == "api" for v in got.values())


def test_describe_instance(cloudsim: Any, topo: Topology, provider: Any) -> None:
    inst = make_instance(cloudsim, topo)
    info = provider.describe_instance(inst["instance_id"])
    assert info.instance_type == "ecs.g6.xlarge"
    assert info.zone_id == ZONE and info.vpc_id == topo.vpc_id
    assert info.primary_eni_id == inst["primary_eni_id"] and info.primary_ip == inst["primary_ip"]
    assert info.status == "Running"
    with pytest.raises(NotFound):
        provider.describe_instance("i-doesnotexist")


def test_eni_count_limit_counts_the_primary(cloudsim: Any, topo: Topology, provider: Any
                                            ) -> None:
    inst = make_instance(cloudsim, topo, "ecs.g6.xlarge")  # 3 ENIs, primary included
    vsw = topo.vswitch_ids(ZONE)[0]
    enis = [provider.create_eni(vsw, [topo.security_group_id], {}) for _ in range(3)]
    provider.attach_eni(enis[0].eni_id, inst["instance_id"])
    provider.attach_eni(enis[1].eni_id, inst["instance_id"])
    with pytest.raises(QuotaExceeded) as ei:
        provider.attach_eni(enis[2].eni_id, inst["instance_id"])
    assert ei.value.code == "EniPerInstanceLimitExceeded"
    for e in enis[:2]:
        in_use(provider, e.eni_id)
    indexes = sorted(e.device_index for e in provider.describe_enis(
        instance_id=inst["instance_id"]))
    assert indexes == [0, 1, 2]


def test_ips_per_eni_limit(cloudsim: Any, topo: Topology, provider: Any) -> None:
    inst = make_instance(cloudsim, topo, "ecs.g6.large")  # 6 IPs per ENI
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    in_use(provider, eni.eni_id)
    assert len(provider.assign_ips(eni.eni_id, 5)) == 5
    with pytest.raises(QuotaExceeded) as ei:
        provider.assign_ips(eni.eni_id, 1)
    assert ei.value.code == "InvalidOperation.Ipv4CountExceeded"
    # an unattached ENI holds at most 49 secondary IPs, all given at creation if wanted
    free = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                               secondary_ip_count=49)
    assert len(set(free.private_ips)) == 49
    with pytest.raises(QuotaExceeded):
        provider.assign_ips(free.eni_id, 1)
    err = sdk_error(lambda: cloudsim.client().create_network_interface(
        ecs.CreateNetworkInterfaceRequest(
            region_id=cloudsim.region, v_switch_id=topo.vswitch_ids(ZONE)[0],
            security_group_ids=[topo.security_group_id], secondary_private_ip_address_count=50)))
    assert (err.code, err.status_code) == ("MaxEniPrivateIpsCountExceeded", 403)
    with pytest.raises(InvalidParameter):  # the provider says so before calling
        provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                            secondary_ip_count=50)
    # ...and cannot be attached to a type that allows fewer
    with pytest.raises(QuotaExceeded):
        provider.attach_eni(free.eni_id, make_instance(cloudsim, topo, "ecs.g6.large")
                            ["instance_id"])


def test_primary_eni_cannot_be_detached_or_deleted(cloudsim: Any, topo: Topology,
                                                   provider: Any) -> None:
    inst = make_instance(cloudsim, topo)
    with pytest.raises(InvalidParameter) as ei:
        provider.detach_eni(inst["primary_eni_id"], inst["instance_id"])
    assert ei.value.code == "InvalidOperation.DetachPrimaryEniNotAllowed"
    with pytest.raises(InvalidParameter) as ei:
        provider.delete_eni(inst["primary_eni_id"])
    assert ei.value.code == "InvalidOperation.InvalidEniType"
    assert status_of(provider, inst["primary_eni_id"]) == "InUse"


def test_same_vpc_and_zone_but_any_vswitch_of_the_zone(cloudsim: Any, topo: Topology,
                                                       provider: Any) -> None:
    inst = make_instance(cloudsim, topo, "ecs.g6.2xlarge")
    zone_a = topo.vswitch_ids(ZONE)
    other_vsw = provider.create_eni(zone_a[1], [topo.security_group_id], {})
    provider.attach_eni(other_vsw.eni_id, inst["instance_id"])
    assert in_use(provider, other_vsw.eni_id).vswitch_id == zone_a[1]

    wrong_zone = provider.create_eni(topo.vswitch_ids(ZONE_B)[0], [topo.security_group_id], {})
    with pytest.raises(InvalidParameter) as ei:
        provider.attach_eni(wrong_zone.eni_id, inst["instance_id"])
    assert ei.value.code == "InvalidOperation.AvailabilityZoneMismatch"

    other = cloudsim.admin.bootstrap({ZONE: ["192.168.0.0/24"]}, vpc_cidr="192.168.0.0/16")
    wrong_vpc = provider.create_eni(other.vswitch_ids(ZONE)[0], [other.security_group_id], {})
    with pytest.raises(InvalidParameter) as ei:
        provider.attach_eni(wrong_vpc.eni_id, inst["instance_id"])
    assert ei.value.code == "InvalidOperation.VpcMismatch"
    # a security group of another VPC is refused at creation
    with pytest.raises(InvalidParameter):
        provider.create_eni(zone_a[0], [other.security_group_id], {})


@pytest.mark.parametrize("itype", ["ecs.t6-c1m1.large", "ecs.s6-c1m2.large", "ecs.e-c1m2.large",
                                   "ecs.t5-lc1m2.small", "ecs.n4.small", "ecs.e4.small"])
def test_no_hot_swap_families_need_a_stopped_instance(cloudsim: Any, topo: Topology,
                                                      provider: Any, itype: str) -> None:
    inst = make_instance(cloudsim, topo, itype)
    iid = inst["instance_id"]
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    with pytest.raises(InvalidState) as ei:
        provider.attach_eni(eni.eni_id, iid)
    assert (ei.value.code, ei.value.status) == ("InvalidOperation.InvalidEcsState", 400)
    assert status_of(provider, eni.eni_id) == "Available"
    cloudsim.admin.stop(iid)
    provider.attach_eni(eni.eni_id, iid)
    in_use(provider, eni.eni_id)
    cloudsim.admin.start(iid)
    with pytest.raises(InvalidState):
        provider.detach_eni(eni.eni_id, iid)
    cloudsim.admin.stop(iid)
    provider.detach_eni(eni.eni_id, iid)
    wait_for(lambda: status_of(provider, eni.eni_id) == "Available", what="detached")


def test_hot_swap_family_attaches_while_running(cloudsim: Any, topo: Topology,
                                                provider: Any) -> None:
    inst = make_instance(cloudsim, topo, "ecs.g7.large")
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    in_use(provider, eni.eni_id)


def test_security_groups_one_to_five(cloudsim: Any, topo: Topology, provider: Any) -> None:
    vsw = topo.vswitch_ids(ZONE)[0]
    sgs = [topo.security_group_id] + [
        cloudsim.admin.create_security_group(topo.vpc_id)["security_group_id"]
        for _ in range(5)]
    assert len(provider.create_eni(vsw, sgs[:5], {}).security_group_ids) == 5
    with pytest.raises(InvalidParameter) as ei:
        provider.create_eni(vsw, sgs, {})
    assert (ei.value.code, ei.value.status) == ("JoinedGroupLimitExceed", 400)
    with pytest.raises(InvalidParameter) as ei:
        provider.create_eni(vsw, [], {})
    assert ei.value.code.startswith("MissingParameter")
    with pytest.raises(NotFound):
        provider.create_eni(vsw, ["sg-nope"], {})
    eni = provider.create_eni(vsw, sgs[:1], {})
    with pytest.raises(InvalidParameter):
        provider.modify_eni(eni.eni_id, security_group_ids=sgs)
    provider.modify_eni(eni.eni_id, security_group_ids=sgs[1:4])
    assert provider.describe_enis([eni.eni_id])[0].security_group_ids == tuple(sgs[1:4])


def test_region_eni_quota(cloudsim: Any, topo: Topology, provider: Any) -> None:
    cloudsim.admin.set_quota(3)
    vsw = topo.vswitch_ids(ZONE)[0]
    make_instance(cloudsim, topo)  # primary ENIs do not count
    made = [provider.create_eni(vsw, [topo.security_group_id], {}) for _ in range(3)]
    with pytest.raises(QuotaExceeded) as ei:
        provider.create_eni(vsw, [topo.security_group_id], {})
    assert (ei.value.code, ei.value.status) == ("MaxEniCountExceeded", 403)
    provider.delete_eni(made[0].eni_id)
    provider.create_eni(vsw, [topo.security_group_id], {})


def test_default_region_quota_is_100(cloudsim: Any) -> None:
    assert cloudsim.admin.state()["settings"]["eni_quota"] == 100


def test_at_most_ten_ips_per_call(cloudsim: Any, topo: Topology, provider: Any) -> None:
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    client = cloudsim.client()
    err = sdk_error(lambda: client.assign_private_ip_addresses(
        ecs.AssignPrivateIpAddressesRequest(region_id=cloudsim.region,
                                            network_interface_id=eni.eni_id,
                                            secondary_private_ip_address_count=11)))
    assert err.status_code == 400 and err.code.startswith("InvalidParameter")
    ips = provider.assign_ips(eni.eni_id, 10)
    inst = make_instance(cloudsim, topo, "ecs.g6.4xlarge")  # 20 IPs per ENI
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    in_use(provider, eni.eni_id)
    provider.assign_ips(eni.eni_id, 5)
    err = sdk_error(lambda: client.unassign_private_ip_addresses(
        ecs.UnassignPrivateIpAddressesRequest(region_id=cloudsim.region,
                                              network_interface_id=eni.eni_id,
                                              private_ip_address=[*ips, "10.0.0.200"])))
    assert err.status_code == 400
    provider.unassign_ips(eni.eni_id, ips)
    with pytest.raises(InvalidParameter):
        provider.assign_ips(eni.eni_id, 11)  # the provider refuses before calling
    assert len(provider.describe_enis([eni.eni_id])[0].private_ips) == 5


def test_unassign_rules(cloudsim: Any, topo: Topology, provider: Any) -> None:
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {},
                              secondary_ip_count=2)
    with pytest.raises(NotFound) as ei:
        provider.unassign_ips(eni.eni_id, ["10.0.0.99"])
    assert ei.value.code == "InvalidIp.IpUnassigned"
    with pytest.raises(NotFound) as ei:  # the primary IP is no secondary IP
        provider.unassign_ips(eni.eni_id, [eni.primary_ip])
    assert (ei.value.code, ei.value.status) == ("InvalidIp.IpUnassigned", 403)
    provider.unassign_ips(eni.eni_id, list(eni.private_ips))
    assert provider.describe_enis([eni.eni_id])[0].private_ips == ()


def test_vswitch_exhaustion(cloudsim: Any, provider: Any) -> None:
    topo = cloudsim.admin.bootstrap({ZONE: ["10.9.0.0/28"]})  # 16 - 4 reserved = 12 usable
    vsw = topo.vswitch_ids(ZONE)[0]
    assert provider.describe_vswitches([vsw])[0].available_ips == 12
    inst = make_instance(cloudsim, topo, "ecs.g6.4xlarge")  # takes one
    eni = provider.create_eni(vsw, [topo.security_group_id], {})  # and one
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    in_use(provider, eni.eni_id)
    got = provider.assign_ips(eni.eni_id, 10)
    assert provider.describe_vswitches([vsw])[0].available_ips == 0
    with pytest.raises(VSwitchExhausted) as ei:
        provider.assign_ips(eni.eni_id, 1)
    assert ei.value.code == "InvalidVSwitchId.IpNotEnough" and ei.value.status == 403
    with pytest.raises(VSwitchExhausted):
        provider.create_eni(vsw, [topo.security_group_id], {})
    all_ips = {inst["primary_ip"], eni.primary_ip, *got}
    assert len(all_ips) == 12
    assert not {"10.9.0.0", "10.9.0.13", "10.9.0.14", "10.9.0.15"} & all_ips
    provider.unassign_ips(eni.eni_id, got[:1])
    assert provider.describe_vswitches([vsw])[0].available_ips == 1


def test_attach_and_detach_are_asynchronous(cloudsim: Any, topo: Topology, provider: Any
                                            ) -> None:
    cloudsim.admin.set_settings(attach_delay=0.4, detach_delay=0.4)
    inst = make_instance(cloudsim, topo)
    eni = provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], {})
    assert eni.status == "Available"
    provider.attach_eni(eni.eni_id, inst["instance_id"])
    assert status_of(provider, eni.eni_id) == "Attaching"
    with pytest.raises(InvalidState):
        provider.assign_ips(eni.eni_id, 1)
    with pytest.raises(InvalidState):
        provider.detach_eni(eni.eni_id, inst["instance_id"])
    assert in_use(provider, eni.eni_id).instance_id == inst["instance_id"]
    with pytest.raises(InvalidState):
        provider.delete_eni(eni.eni_id)  # only Available ENIs can be deleted
    provider.detach_eni(eni.eni_id, inst["instance_id"])
    assert status_of(provider, eni.eni_id) == "Detaching"
    with pytest.raises(InvalidState):
        provider.delete_eni(eni.eni_id)
    wait_for(lambda: status_of(provider, eni.eni_id) == "Available", what="Available")
    assert provider.describe_enis([eni.eni_id])[0].instance_id == ""
    provider.delete_eni(eni.eni_id)
    assert provider.describe_enis([eni.eni_id]) == []
    with pytest.raises(NotFound):
        provider.delete_eni(eni.eni_id)


def test_release_with_instance(cloudsim: Any, topo: Topology, provider: Any) -> None:
    inst = make_instance(cloudsim, topo, "ecs.g6.2xlarge")
    vsw = topo.vswitch_ids(ZONE)[0]
    goes = provider.create_eni(vsw, [topo.security_group_id], {}, delete_on_release=True)
    assert goes.delete_on_release
    assert provider.describe_enis([goes.eni_id])[0].delete_on_release
    stays = provider.create_eni(vsw, [topo.security_group_id], {}, secondary_ip_count=2)
    flipped = provider.create_eni(vsw, [topo.security_group_id], {})
    provider.modify_eni(flipped.eni_id, delete_on_release=True)
    for e in (goes, stays, flipped):
        provider.attach_eni(e.eni_id, inst["instance_id"])
        in_use(provider, e.eni_id)
    before = provider.describe_vswitches([vsw])[0].available_ips
    result = cloudsim.admin.release(inst["instance_id"])
    assert sorted(result["deleted"]) == sorted([inst["primary_eni_id"], goes.eni_id,
                                                flipped.eni_id])
    assert result["detached"] == [stays.eni_id]
    left = provider.describe_enis([goes.eni_id, stays.eni_id, flipped.eni_id,
                                   inst["primary_eni_id"]])
    assert [(e.eni_id, e.status, e.instance_id) for e in left] == [
        (stays.eni_id, "Available", "")]
    assert len(left[0].private_ips) == 2
    assert provider.describe_vswitches([vsw])[0].available_ips == before + 3
    with pytest.raises(NotFound):
        provider.describe_instance(inst["instance_id"])


def test_describe_filters_and_paging(cloudsim: Any, topo: Topology, provider: Any) -> None:
    vsw = topo.vswitch_ids(ZONE)[0]
    tagged = [provider.create_eni(vsw, [topo.security_group_id], {"eniway.io/creator": "x",
                                                                  "n": str(i)})
              for i in range(25)]
    others = [provider.create_eni(vsw, [topo.security_group_id], {}) for _ in range(3)]
    assert [e.eni_id for e in provider.describe_enis(tags={"eniway.io/creator": "x"})] == \
        [e.eni_id for e in tagged]
    assert [e.eni_id for e in provider.describe_enis(tags={"n": "7"})] == [tagged[7].eni_id]
    ids = [others[1].eni_id, tagged[3].eni_id]
    assert {e.eni_id for e in provider.describe_enis(eni_ids=ids)} == set(ids)
    inst = make_instance(cloudsim, topo)
    provider.attach_eni(others[0].eni_id, inst["instance_id"])
    in_use(provider, others[0].eni_id)
    on_inst = provider.describe_enis(instance_id=inst["instance_id"])
    assert {e.eni_id for e in on_inst} == {inst["primary_eni_id"], others[0].eni_id}
    assert len(provider.describe_enis(status="Available")) == 27
    # the provider pages with NextToken; check both paging styles on the wire
    client = cloudsim.client()
    seen: list[str] = []
    token = None
    while True:
        body = client.describe_network_interfaces(ecs.DescribeNetworkInterfacesRequest(
            region_id=cloudsim.region, max_results=10, next_token=token)).body
        seen += [n.network_interface_id for n in body.network_interface_sets.network_interface_set]
        token = body.next_token
        if not token:
            break
    pages = []
    for number in (1, 2, 3, 4):
        body = client.describe_network_interfaces(ecs.DescribeNetworkInterfacesRequest(
            region_id=cloudsim.region, page_number=number, page_size=10)).body
        assert body.total_count == 29
        pages += [n.network_interface_id for n in body.network_interface_sets.network_interface_set]
    assert seen == pages and len(seen) == 29 == len(set(seen))
    err = sdk_error(lambda: client.describe_network_interfaces(
        ecs.DescribeNetworkInterfacesRequest(region_id=cloudsim.region, next_token="bogus")))
    assert err.code == "InvalidNextToken.Malformed"


def test_client_token_idempotency(cloudsim: Any, topo: Topology, provider: Any) -> None:
    vsw = topo.vswitch_ids(ZONE)[0]
    a = provider.create_eni(vsw, [topo.security_group_id], {"k": "v"}, client_token="tok-1")
    b = provider.create_eni(vsw, [topo.security_group_id], {"k": "v"}, client_token="tok-1")
    assert a.eni_id == b.eni_id
    assert len(provider.describe_enis(tags={"k": "v"})) == 1
    with pytest.raises(InvalidParameter) as ei:
        provider.create_eni(vsw, [topo.security_group_id], {"k": "other"}, client_token="tok-1")
    assert ei.value.code == "IdempotentParameterMismatch"
    ips1 = provider.assign_ips(a.eni_id, 3, client_token="tok-2")
    ips2 = provider.assign_ips(a.eni_id, 3, client_token="tok-2")
    assert ips1 == ips2
    assert len(provider.describe_enis([a.eni_id])[0].private_ips) == 3


def test_signature_and_region_are_checked(cloudsim: Any) -> None:
    bad = cloudsim.client(access_key_secret="wrong")
    err = sdk_error(lambda: bad.describe_vswitches(
        ecs.DescribeVSwitchesRequest(region_id=cloudsim.region)))
    assert err.code == "SignatureDoesNotMatch"
    unknown = cloudsim.client(access_key_id="nobody")
    err = sdk_error(lambda: unknown.describe_vswitches(
        ecs.DescribeVSwitchesRequest(region_id=cloudsim.region)))
    assert err.code == "InvalidAccessKeyId.NotFound" and err.status_code == 404
    err = sdk_error(lambda: cloudsim.client().describe_vswitches(
        ecs.DescribeVSwitchesRequest(region_id="us-west-1")))
    assert err.code == "InvalidRegionId.NotFound"
    body = cloudsim.client().describe_vswitches(
        ecs.DescribeVSwitchesRequest(region_id=cloudsim.region)).body
    assert body.request_id and body.total_count == 0


def test_error_response_shape(cloudsim: Any) -> None:
    err = sdk_error(lambda: cloudsim.client().delete_network_interface(
        ecs.DeleteNetworkInterfaceRequest(region_id=cloudsim.region,
                                          network_interface_id="eni-missing")))
    assert err.status_code == 404
    assert err.code == "InvalidEniId.NotFound"
    assert err.request_id and err.data["RequestId"] == err.request_id
    assert err.data["HostId"] and err.data["Message"]


def test_admin_errors(cloudsim: Any, topo: Topology) -> None:
    with pytest.raises(AdminError) as ei:
        cloudsim.admin.create_vswitch(topo.vpc_id, ZONE, "10.0.0.128/25")  # overlaps
    assert ei.value.code == "InvalidCidrBlock.Overlapped"
    with pytest.raises(AdminError):
        cloudsim.admin.create_instance("ecs.nope.large", topo.vswitch_ids(ZONE)[0],
                                       [topo.security_group_id])
    inst = make_instance(cloudsim, topo)
    with pytest.raises(AdminError):
        cloudsim.admin.start(inst["instance_id"])  # already running


def test_at_most_100_ids_per_describe(cloudsim: Any) -> None:
    client = cloudsim.client()
    err = sdk_error(lambda: client.describe_network_interfaces(
        ecs.DescribeNetworkInterfacesRequest(region_id=cloudsim.region,
                                             network_interface_id=[f"eni-{i}" for i in
                                                                   range(101)])))
    assert err.status_code == 400
    body = client.describe_network_interfaces(ecs.DescribeNetworkInterfacesRequest(
        region_id=cloudsim.region, network_interface_id=[f"eni-{i}" for i in range(100)])).body
    assert body.total_count == 0
