"""eniway-cloudsim's EC2 dialect through boto3: aws-flavoured VPCs, the ENI actions, their
EC2 errors, paging, filters, idempotency, attach delays and instance-type limits.

References (EC2 API Reference and Developer Guide):
- Error codes: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
- Subnet sizing (5 reserved addresses, the router at +1):
  https://docs.aws.amazon.com/vpc/latest/userguide/subnet-sizing.html
- AssignPrivateIpAddresses:
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_AssignPrivateIpAddresses.html
- Pagination: https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-pagination.html
- Idempotency: https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from eniway_cloudsim.admin import AdminError, Topology
from eniway_cloudsim.ec2_catalog import ec2_catalog
from eniway_cloudsim.testing import SimHandle, start_in_process

ZONE = "us-east-1a"
HEX17 = r"[0-9a-f]{17}"


class Env:
    def __init__(self, sim: SimHandle) -> None:
        self.sim = sim
        self.topo: Topology = sim.bootstrap_aws({ZONE: ["10.0.0.0/24", "10.0.1.0/28"]})
        self.subnet = self.topo.vswitch_ids(ZONE)[0]
        self.small = self.topo.vswitch_ids(ZONE)[1]
        self.sg = self.topo.security_group_id
        self.ec2 = sim.ec2_client()

    def instance(self, itype: str = "m5.large") -> dict[str, Any]:
        return self.sim.admin.create_instance(itype, self.subnet, [self.sg])

    def eni(self, **kw: Any) -> dict[str, Any]:
        kw.setdefault("SubnetId", self.subnet)
        kw.setdefault("Groups", [self.sg])
        return self.ec2.create_network_interface(**kw)["NetworkInterface"]  # type: ignore

    def attached(self, eni_id: str, instance_id: str, index: int = 1) -> str:
        att = self.ec2.attach_network_interface(NetworkInterfaceId=eni_id,
                                                InstanceId=instance_id, DeviceIndex=index)
        wait_status(self.ec2, eni_id, "attached")
        return str(att["AttachmentId"])


@pytest.fixture
def env() -> Iterator[Env]:
    sim = start_in_process(attach_delay=0.3, detach_delay=0.3)
    try:
        yield Env(sim)
    finally:
        sim.close()


def code_of(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def status_of(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def attachment(ec2: Any, eni_id: str) -> dict[str, Any] | None:
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
    return eni.get("Attachment")  # type: ignore[no-any-return]


def wait_status(ec2: Any, eni_id: str, want: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        att = attachment(ec2, eni_id)
        now = att["Status"] if att else "detached"
        if now == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{eni_id} never reached {want}")


def test_aws_vpc_follows_ec2_subnet_rules(env: Env) -> None:
    """Subnet sizing: the first four addresses and the last are reserved, the router is
    the network address + 1; ids are prefix + 17 hex digits, MACs 02:xx (locally
    administered)."""
    state = env.sim.admin.state()
    sub = next(v for v in state["vswitches"] if v["vswitch_id"] == env.subnet)
    assert sub["gateway"] == "10.0.0.1"
    subnets = env.ec2.describe_subnets(SubnetIds=[env.subnet])["Subnets"]
    assert subnets[0]["AvailableIpAddressCount"] == 256 - 5
    assert subnets[0]["CidrBlock"] == "10.0.0.0/24"
    assert subnets[0]["AvailabilityZone"] == ZONE
    assert subnets[0]["VpcId"] == env.topo.vpc_id
    for value, prefix in ((env.topo.vpc_id, "vpc-"), (env.subnet, "subnet-"),
                          (env.sg, "sg-")):
        assert re.fullmatch(prefix + HEX17, value), value
    inst = env.instance()
    assert re.fullmatch("i-" + HEX17, inst["instance_id"])
    assert inst["primary_ip"] == "10.0.0.4", "the first four addresses are reserved"
    assert inst["provider_id"] == f"aws:///{ZONE}/{inst['instance_id']}"
    assert inst["metadata_url"].startswith(f"{env.sim.url}/instances/{inst['instance_id']}/")
    primary = inst["enis"][0]
    assert re.fullmatch("eni-" + HEX17, primary["eni_id"])
    assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", primary["mac"])
    assert primary["device_index"] == 0
    # the last address is the broadcast one, never handed out: fill the /28 (11 usable)
    small = env.eni(SubnetId=env.small, SecondaryPrivateIpAddressCount=10)
    ips = [a["PrivateIpAddress"] for a in small["PrivateIpAddresses"]]
    assert ips[0] == "10.0.1.4" and ips[-1] == "10.0.1.14"
    with pytest.raises(ClientError) as exc:
        env.eni(SubnetId=env.small)
    assert code_of(exc) == "InsufficientFreeAddressesInSubnet"
    assert status_of(exc) == 400
    with pytest.raises(AdminError) as admin_exc:  # EC2 subnets are /16 to /28
        env.sim.admin.create_vswitch(env.topo.vpc_id, ZONE, "10.0.2.0/29")
    assert admin_exc.value.code == "InvalidCidrBlock.Malformed"
    with pytest.raises(AdminError) as admin_exc:
        env.sim.admin.create_vswitch(env.topo.vpc_id, "cn-hangzhou-i", "10.0.2.0/28")
    assert admin_exc.value.code == "InvalidParameter.ZoneId"


def test_dialects_see_only_their_own_flavour(env: Env) -> None:
    """An aliyun VPC is invisible to EC2 and an aws one to ECS, on one listener."""
    from alibabacloud_ecs20140526 import models as ecs

    inst = env.instance()
    ali = env.sim.admin.bootstrap({"cn-hangzhou-i": ["192.168.0.0/24"]}, "192.168.0.0/16")
    ali_inst = env.sim.admin.create_instance("ecs.g6.large", ali.vswitch_ids("cn-hangzhou-i")[0],
                                             [ali.security_group_id])
    assert [s["SubnetId"] for s in env.ec2.describe_subnets()["Subnets"]] == \
        [env.subnet, env.small]
    ids = [i["InstanceId"] for r in env.ec2.describe_instances()["Reservations"]
           for i in r["Instances"]]
    assert ids == [inst["instance_id"]]
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_instances(InstanceIds=[ali_inst["instance_id"]])
    assert code_of(exc) in ("InvalidInstanceID.Malformed", "InvalidInstanceID.NotFound")
    client = env.sim.client()
    seen = client.describe_instances(ecs.DescribeInstancesRequest(
        region_id=env.sim.region)).body.instances.instance
    assert [i.instance_id for i in seen] == [ali_inst["instance_id"]]
    vsws = client.describe_vswitches(ecs.DescribeVSwitchesRequest(
        region_id=env.sim.region)).body.v_switches.v_switch
    assert [v.v_switch_id for v in vsws] == ali.vswitch_ids("cn-hangzhou-i")
    with pytest.raises(Exception) as sdk:
        client.attach_network_interface(ecs.AttachNetworkInterfaceRequest(
            region_id=env.sim.region, network_interface_id=env.eni()["NetworkInterfaceId"],
            instance_id=inst["instance_id"]))
    assert "InvalidEniId.NotFound" in str(sdk.value)
    # nor does the Alibaba VPC API put an EIP on an aws instance
    from alibabacloud_vpc20160428 import models as vpc

    eips = env.sim.vpc_client()
    alloc = eips.allocate_eip_address(vpc.AllocateEipAddressRequest(
        region_id=env.sim.region)).body.allocation_id
    with pytest.raises(Exception) as sdk:
        eips.associate_eip_address(vpc.AssociateEipAddressRequest(
            region_id=env.sim.region, allocation_id=alloc, instance_id=inst["instance_id"]))
    assert "InvalidInstanId.NotFound" in str(sdk.value)


def test_describe_instances(env: Env) -> None:
    a, b = env.instance(), env.instance("c5.xlarge")
    got = env.ec2.describe_instances(InstanceIds=[b["instance_id"]])["Reservations"]
    assert len(got) == 1
    one = got[0]["Instances"][0]
    assert one["InstanceType"] == "c5.xlarge"
    assert one["Placement"]["AvailabilityZone"] == ZONE
    assert one["State"]["Name"] == "running"
    nics = one["NetworkInterfaces"]
    assert [(n["NetworkInterfaceId"], n["Attachment"]["DeviceIndex"],
             n["Attachment"]["NetworkCardIndex"]) for n in nics] == \
        [(b["enis"][0]["eni_id"], 0, 0)]
    assert nics[0]["PrivateIpAddress"] == b["primary_ip"]
    filtered = env.ec2.describe_instances(Filters=[
        {"Name": "instance-type", "Values": ["m5.*"]}])["Reservations"]
    assert [r["Instances"][0]["InstanceId"] for r in filtered] == [a["instance_id"]]
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"])
    assert code_of(exc) == "InvalidInstanceID.NotFound"
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_instances(InstanceIds=["i-nothex"])
    assert code_of(exc) == "InvalidInstanceID.Malformed"
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_instances(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert code_of(exc) == "InvalidParameterValue"


def test_describe_instance_types_matches_the_table(env: Env) -> None:
    """The figures come from the generated table (moto's DescribeInstanceTypes data)."""
    table = ec2_catalog()
    for family in ("m5", "m6i", "c5", "c6i", "r5", "t3", "m7g"):
        assert f"{family}.large" in table, family
    got = env.ec2.describe_instance_types(InstanceTypes=["m5.large", "c6in.32xlarge"])
    by = {t["InstanceType"]: t for t in got["InstanceTypes"]}
    m5 = by["m5.large"]["NetworkInfo"]
    assert (m5["MaximumNetworkInterfaces"], m5["Ipv4AddressesPerInterface"]) == (3, 10)
    assert m5["NetworkCards"] == [{"NetworkCardIndex": 0, "MaximumNetworkInterfaces": 3}]
    assert by["m5.large"]["VCpuInfo"]["DefaultVCpus"] == 2
    assert by["m5.large"]["MemoryInfo"]["SizeInMiB"] == 8192
    big = by["c6in.32xlarge"]["NetworkInfo"]
    assert big["MaximumNetworkCards"] == 2
    assert [c["MaximumNetworkInterfaces"] for c in big["NetworkCards"]] == \
        list(table["c6in.32xlarge"].card_enis)
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_instance_types(InstanceTypes=["m5.huge"])
    assert code_of(exc) == "InvalidInstanceType"
    pages = env.ec2.get_paginator("describe_instance_types").paginate(
        PaginationConfig={"PageSize": 100})
    assert sum(len(p["InstanceTypes"]) for p in pages) == len(table)


def test_eni_lifecycle_with_attach_delay(env: Env) -> None:
    """Attach answers an AttachmentId at once; the attachment is attaching until the
    engine's attach delay has passed, then attached; detach goes through detaching."""
    inst = env.instance()
    eni = env.eni(Description="pods", SecondaryPrivateIpAddressCount=2)
    assert eni["Status"] == "available" and "Attachment" not in eni
    assert eni["Description"] == "pods"
    assert len(eni["PrivateIpAddresses"]) == 3
    assert [a["Primary"] for a in eni["PrivateIpAddresses"]] == [True, False, False]
    att = env.ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                           InstanceId=inst["instance_id"], DeviceIndex=1)
    assert re.fullmatch("eni-attach-" + HEX17, att["AttachmentId"])
    assert att["NetworkCardIndex"] == 0
    first = attachment(env.ec2, eni["NetworkInterfaceId"])
    assert first is not None and first["Status"] == "attaching"
    assert first["InstanceId"] == inst["instance_id"] and first["DeviceIndex"] == 1
    # IPs may be added while the attachment is under way
    env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                        SecondaryPrivateIpAddressCount=1)
    wait_status(env.ec2, eni["NetworkInterfaceId"], "attached")
    assert env.sim.admin.imds(inst["instance_id"], "meta-data/network/interfaces/macs/"
                              f"{eni['MacAddress']}/local-ipv4s").count("\n") == 3
    now = env.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[eni["NetworkInterfaceId"]])["NetworkInterfaces"][0]
    assert now["Status"] == "in-use"
    nics = env.ec2.describe_instances(InstanceIds=[inst["instance_id"]])[
        "Reservations"][0]["Instances"][0]["NetworkInterfaces"]
    assert sorted(n["Attachment"]["DeviceIndex"] for n in nics) == [0, 1]
    with pytest.raises(ClientError) as exc:
        env.ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
    assert code_of(exc) == "InvalidNetworkInterface.InUse"
    env.ec2.detach_network_interface(AttachmentId=att["AttachmentId"])
    detaching = attachment(env.ec2, eni["NetworkInterfaceId"])
    assert detaching is not None and detaching["Status"] == "detaching"
    wait_status(env.ec2, eni["NetworkInterfaceId"], "detached")
    with pytest.raises(ClientError) as exc:
        env.ec2.detach_network_interface(AttachmentId=att["AttachmentId"])
    assert code_of(exc) == "InvalidAttachmentID.NotFound"
    env.ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
    with pytest.raises(ClientError) as exc:
        env.ec2.delete_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"])
    assert code_of(exc) == "InvalidNetworkInterfaceID.NotFound"


def test_attach_errors(env: Env) -> None:
    inst = env.instance()
    eni = env.eni()
    primary_attachment = env.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[inst["enis"][0]["eni_id"]])["NetworkInterfaces"][0]["Attachment"]
    with pytest.raises(ClientError) as exc:
        env.ec2.detach_network_interface(AttachmentId=primary_attachment["AttachmentId"])
    assert code_of(exc) == "OperationNotPermitted"
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                         InstanceId=inst["instance_id"], DeviceIndex=0)
    assert code_of(exc) == "InvalidParameterValue", "device index 0 is the primary's"
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                         InstanceId="i-0123456789abcdef0", DeviceIndex=1)
    assert code_of(exc) == "InvalidInstanceID.NotFound"
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId="eni-0123456789abcdef0",
                                         InstanceId=inst["instance_id"], DeviceIndex=1)
    assert code_of(exc) == "InvalidNetworkInterfaceID.NotFound"
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId="eni-xyz",
                                         InstanceId=inst["instance_id"], DeviceIndex=1)
    assert code_of(exc) == "InvalidNetworkInterfaceID.Malformed"
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                         InstanceId=inst["instance_id"], DeviceIndex=1,
                                         NetworkCardIndex=1)
    assert code_of(exc) == "InvalidParameterValue", "m5.large has one network card"
    env.attached(eni["NetworkInterfaceId"], inst["instance_id"], 1)
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                         InstanceId=inst["instance_id"], DeviceIndex=2)
    assert code_of(exc) == "InvalidParameterValue", "already attached"
    with pytest.raises(ClientError) as exc:
        env.ec2.detach_network_interface(AttachmentId="eni-attach-0123456789abcdef0")
    assert code_of(exc) == "InvalidAttachmentID.NotFound"


def test_attachment_limit_of_the_instance_type(env: Env) -> None:
    """AttachmentLimitExceeded once MaximumNetworkInterfaces (the primary included) are
    attached: m5.large allows 3."""
    inst = env.instance("m5.large")
    for index in (1, 2):
        env.attached(env.eni()["NetworkInterfaceId"], inst["instance_id"], index)
    extra = env.eni()
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId=extra["NetworkInterfaceId"],
                                         InstanceId=inst["instance_id"], DeviceIndex=3)
    assert code_of(exc) == "AttachmentLimitExceeded"
    assert status_of(exc) == 400


def test_assign_and_unassign_up_to_the_type_limit(env: Env) -> None:
    """Ipv4AddressesPerInterface counts the primary IP; EC2 has no per-call cap (20 in
    one call), only the per-ENI limit: PrivateIpAddressLimitExceeded beyond it."""
    inst = env.instance("m5.4xlarge")  # 8 ENIs, 30 IPv4 per ENI
    eni = env.eni()
    eni_id = eni["NetworkInterfaceId"]
    env.attached(eni_id, inst["instance_id"])
    got = env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                              SecondaryPrivateIpAddressCount=20)
    assert got["NetworkInterfaceId"] == eni_id
    assert len(got["AssignedPrivateIpAddresses"]) == 20
    with pytest.raises(ClientError) as exc:
        env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                            SecondaryPrivateIpAddressCount=10)
    assert code_of(exc) == "PrivateIpAddressLimitExceeded", "1 + 20 + 10 > 30"
    env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                        SecondaryPrivateIpAddressCount=9)
    now = env.ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])[
        "NetworkInterfaces"][0]
    assert len(now["PrivateIpAddresses"]) == 30
    # specific addresses, and the errors of a bad request
    secondary = [a["PrivateIpAddress"] for a in now["PrivateIpAddresses"] if not a["Primary"]]
    env.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                          PrivateIpAddresses=secondary[:2])
    env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                        PrivateIpAddresses=["10.0.0.200"])
    with pytest.raises(ClientError) as exc:
        env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                            PrivateIpAddresses=["10.0.0.201"],
                                            SecondaryPrivateIpAddressCount=1)
    assert code_of(exc) == "InvalidParameterCombination"
    with pytest.raises(ClientError) as exc:
        env.ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id)
    assert code_of(exc) == "MissingParameter"
    with pytest.raises(ClientError) as exc:
        env.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                              PrivateIpAddresses=["10.0.0.250"])
    assert code_of(exc) == "InvalidParameterValue"
    with pytest.raises(ClientError) as exc:
        env.ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                              PrivateIpAddresses=[now["PrivateIpAddress"]])
    assert code_of(exc) == "InvalidParameterValue", "the primary IP is not a secondary one"
    # an ENI holding more IPs than a smaller type allows cannot go onto it
    small = env.instance("t3.micro")  # 2 IPv4 per ENI
    big = env.eni(SecondaryPrivateIpAddressCount=5)
    with pytest.raises(ClientError) as exc:
        env.ec2.attach_network_interface(NetworkInterfaceId=big["NetworkInterfaceId"],
                                         InstanceId=small["instance_id"], DeviceIndex=1)
    assert code_of(exc) == "PrivateIpAddressLimitExceeded"


def test_create_errors_and_groups(env: Env) -> None:
    with pytest.raises(ClientError) as exc:
        env.ec2.create_network_interface(SubnetId="subnet-0123456789abcdef0")
    assert code_of(exc) == "InvalidSubnetID.NotFound"
    with pytest.raises(ClientError) as exc:
        env.eni(Groups=["sg-0123456789abcdef0"])
    assert code_of(exc) == "InvalidGroup.NotFound"
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_security_groups(GroupIds=["sg-0123456789abcdef0"])
    assert code_of(exc) == "InvalidGroup.NotFound"
    groups = env.ec2.describe_security_groups(GroupIds=[env.sg])["SecurityGroups"]
    assert [(g["GroupId"], g["VpcId"]) for g in groups] == [(env.sg, env.topo.vpc_id)]
    with pytest.raises(ClientError) as exc:
        env.eni(PrivateIpAddresses=[{"PrivateIpAddress": "10.0.0.50", "Primary": False}],
                SecondaryPrivateIpAddressCount=1)
    assert code_of(exc) == "InvalidParameterCombination"
    chosen = env.eni(PrivateIpAddress="10.0.0.40", PrivateIpAddresses=[
        {"PrivateIpAddress": "10.0.0.40", "Primary": True},
        {"PrivateIpAddress": "10.0.0.41", "Primary": False}])
    assert chosen["PrivateIpAddress"] == "10.0.0.40"
    assert [a["PrivateIpAddress"] for a in chosen["PrivateIpAddresses"]] == \
        ["10.0.0.40", "10.0.0.41"]
    with pytest.raises(ClientError) as exc:
        env.eni(PrivateIpAddress="10.0.0.41")
    assert code_of(exc) == "InvalidIPAddress.InUse"
    with pytest.raises(ClientError) as exc:
        env.eni(SecondaryPrivateIpAddressCount=50)
    assert code_of(exc) == "PrivateIpAddressLimitExceeded", "no type has 51 IPv4 per ENI"
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_vpcs()
    assert code_of(exc) == "InvalidAction"


def test_client_token_is_idempotent(env: Env) -> None:
    """The same ClientToken and parameters answer the first ENI and make no other; other
    parameters with that token are IdempotentParameterMismatch."""
    one = env.eni(ClientToken="tok-1", Description="a")
    again = env.eni(ClientToken="tok-1", Description="a")
    assert again["NetworkInterfaceId"] == one["NetworkInterfaceId"]
    assert len(env.ec2.describe_network_interfaces()["NetworkInterfaces"]) == 1
    with pytest.raises(ClientError) as exc:
        env.eni(ClientToken="tok-1", Description="b")
    assert code_of(exc) == "IdempotentParameterMismatch"
    other = env.eni(ClientToken="tok-2", Description="a")
    assert other["NetworkInterfaceId"] != one["NetworkInterfaceId"]


def test_describe_network_interfaces_paging_and_filters(env: Env) -> None:
    inst = env.instance("m5.xlarge")
    made = [env.eni(TagSpecifications=[{"ResourceType": "network-interface", "Tags": [
        {"Key": "eniway.io/pool", "Value": "a" if i % 2 else "b"}]}])["NetworkInterfaceId"]
        for i in range(12)]
    env.attached(made[0], inst["instance_id"])
    pages = list(env.ec2.get_paginator("describe_network_interfaces").paginate(
        PaginationConfig={"PageSize": 5}))
    assert [len(p["NetworkInterfaces"]) for p in pages] == [5, 5, 3]
    seen = [n["NetworkInterfaceId"] for p in pages for n in p["NetworkInterfaces"]]
    assert seen == [inst["enis"][0]["eni_id"], *made]
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_network_interfaces(NetworkInterfaceIds=made[:2], MaxResults=5)
    assert code_of(exc) == "InvalidParameterCombination"
    with pytest.raises(ClientError) as exc:
        env.ec2.describe_network_interfaces(MaxResults=5, NextToken="garbage")
    assert code_of(exc) == "InvalidPaginationToken"

    def ids(*filters: dict[str, Any]) -> list[str]:
        out = env.ec2.describe_network_interfaces(Filters=list(filters))
        return [n["NetworkInterfaceId"] for n in out["NetworkInterfaces"]]

    assert ids({"Name": "tag:eniway.io/pool", "Values": ["a"]}) == made[1::2]
    assert ids({"Name": "tag-key", "Values": ["eniway.io/*"]}) == made
    assert ids({"Name": "status", "Values": ["in-use"]}) == [inst["enis"][0]["eni_id"],
                                                             made[0]]
    assert ids({"Name": "status", "Values": ["available"]}) == made[1:]
    assert ids({"Name": "attachment.instance-id", "Values": [inst["instance_id"]]}) == \
        [inst["enis"][0]["eni_id"], made[0]]
    assert len(ids({"Name": "vpc-id", "Values": [env.topo.vpc_id]})) == 13
    assert ids({"Name": "subnet-id", "Values": [env.small]}) == []
    assert ids({"Name": "status", "Values": ["available"]},
               {"Name": "tag:eniway.io/pool", "Values": ["b"]}) == made[2::2]


def test_modify_attribute_and_tags(env: Env) -> None:
    inst = env.instance()
    eni_id = env.eni()["NetworkInterfaceId"]
    other_sg = env.sim.admin.create_security_group(env.topo.vpc_id)["security_group_id"]

    def now() -> dict[str, Any]:
        return env.ec2.describe_network_interfaces(  # type: ignore[no-any-return]
            NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]

    env.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                               SourceDestCheck={"Value": False})
    assert now()["SourceDestCheck"] is False
    env.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                               Groups=[env.sg, other_sg])
    assert [g["GroupId"] for g in now()["Groups"]] == [env.sg, other_sg]
    env.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                               Description={"Value": "node a"})
    assert now()["Description"] == "node a"
    with pytest.raises(ClientError) as exc:
        env.ec2.modify_network_interface_attribute(
            NetworkInterfaceId=eni_id, Description={"Value": "x"},
            SourceDestCheck={"Value": True})
    assert code_of(exc) == "InvalidParameterCombination"
    with pytest.raises(ClientError) as exc:
        env.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                                   Groups=["sg-0123456789abcdef0"])
    assert code_of(exc) == "InvalidGroup.NotFound"
    att = env.attached(eni_id, inst["instance_id"])
    assert now()["Attachment"]["DeleteOnTermination"] is False
    env.ec2.modify_network_interface_attribute(
        NetworkInterfaceId=eni_id,
        Attachment={"AttachmentId": att, "DeleteOnTermination": True})
    assert now()["Attachment"]["DeleteOnTermination"] is True
    with pytest.raises(ClientError) as exc:
        env.ec2.modify_network_interface_attribute(
            NetworkInterfaceId=eni_id, Attachment={"AttachmentId": "eni-attach-0123456789abcdef0",
                                                   "DeleteOnTermination": True})
    assert code_of(exc) == "InvalidAttachmentID.NotFound"
    # DeleteOnTermination is honoured when the instance goes
    released = env.sim.admin.release(inst["instance_id"])
    assert eni_id in released["deleted"]

    tagged = env.eni()["NetworkInterfaceId"]
    env.ec2.create_tags(Resources=[tagged], Tags=[{"Key": "a", "Value": "1"},
                                                  {"Key": "b", "Value": "2"}])
    tags = {t["Key"]: t["Value"] for t in env.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[tagged])["NetworkInterfaces"][0]["TagSet"]}
    assert tags == {"a": "1", "b": "2"}
    env.ec2.delete_tags(Resources=[tagged], Tags=[{"Key": "a"}, {"Key": "b", "Value": "9"}])
    tags = {t["Key"]: t["Value"] for t in env.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[tagged])["NetworkInterfaces"][0]["TagSet"]}
    assert tags == {"b": "2"}, "a Value that does not match keeps the tag"
    with pytest.raises(ClientError) as exc:
        env.ec2.create_tags(Resources=["eni-0123456789abcdef0"], Tags=[{"Key": "a"}])
    assert code_of(exc) == "InvalidNetworkInterfaceID.NotFound"


def test_state_survives_a_restart(tmp_path: Any) -> None:
    """aws objects keep their flavour, attachment ids and tags across a restart."""
    state = str(tmp_path / "sim.db")
    sim = start_in_process(state=state)
    try:
        env = Env(sim)
        inst = env.instance()
        eni_id = env.eni(TagSpecifications=[{"ResourceType": "network-interface",
                                             "Tags": [{"Key": "k", "Value": "v"}]}]
                         )["NetworkInterfaceId"]
        att = env.attached(eni_id, inst["instance_id"])
    finally:
        sim.close()
    again = start_in_process(state=state)
    try:
        ec2 = again.ec2_client()
        eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])[
            "NetworkInterfaces"][0]
        assert eni["Attachment"]["AttachmentId"] == att
        assert eni["TagSet"] == [{"Key": "k", "Value": "v"}]
        assert ec2.describe_subnets()["Subnets"][0]["AvailableIpAddressCount"] == 251 - 2
    finally:
        again.close()
