"""The aws provider's requests against moto's EC2 server, an emulator written by others:
the VPC, subnet, security group and instances are made with boto3 directly, then every
provider method runs against them and its answer is checked against what boto3 itself
describes. Request shapes (filters, paging, TagSpecifications, attachment ids, device
indexes) are moto's to accept or refuse."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import server as moto_server

from eniway_operator.cloud import aws
from eniway_operator.cloud.aws import AwsProvider
from eniway_operator.cloud.base import InvalidParameter, NotFound

REGION = "us-east-1"
ZONE = "us-east-1a"
KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "secret"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass
class World:
    ec2: Any  # boto3's own client, for setting up and for checking
    provider: AwsProvider
    vpc: str
    subnet: str
    sg: str
    instances: list[str]


@pytest.fixture
def world(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a real IMDS
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset",
                                                  method="POST"), timeout=10).read()
    session = boto3.session.Session(region_name=REGION, **KEYS)
    ec2 = session.client("ec2", endpoint_url=endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24",
                               AvailabilityZone=ZONE)["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="pods", Description="pods",
                                   VpcId=vpc)["GroupId"]
    run = ec2.run_instances(ImageId="ami-12c6146b", MinCount=2, MaxCount=2,
                            InstanceType="m5.large", SubnetId=subnet)
    ids = [i["InstanceId"] for i in run["Instances"]]
    provider = AwsProvider(REGION, endpoint=endpoint, session=session)
    return World(ec2, provider, vpc, subnet, sg, ids)


def test_instances_by_id_with_paging(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = list(world.instances)
    for _ in range(5):  # one reservation each (moto pages reservations)
        ids += [i["InstanceId"] for i in world.ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.medium",
            SubnetId=world.subnet)["Instances"]]
    monkeypatch.setattr(aws, "MAX_RESULTS", 5)  # EC2's smallest page
    found = world.provider.describe_instances([*ids, "i-0000000000000dead"])
    assert sorted(i.instance_id for i in found) == sorted(ids)  # the missing one left out
    assert world.provider.calls["DescribeInstances"] == 2  # 6 reservations, pages of 5
    truth = world.ec2.describe_instances(InstanceIds=[ids[0]])["Reservations"][0][
        "Instances"][0]
    info = world.provider.describe_instance(ids[0])
    assert (info.instance_type, info.zone_id, info.vpc_id, info.status, info.region_id) == (
        "m5.large", ZONE, world.vpc, "Running", REGION)
    assert info.vswitch_id == world.subnet and info.primary_ip == truth["PrivateIpAddress"]
    primary = truth["NetworkInterfaces"][0]["NetworkInterfaceId"]
    assert info.primary_eni_id == primary and info.eni_ids == (primary,)
    with pytest.raises(NotFound):
        world.provider.describe_instance("i-0000000000000dead")
    world.ec2.stop_instances(InstanceIds=[ids[1]])
    assert world.provider.describe_instance(ids[1]).status in ("Stopping", "Stopped")


def test_instance_limits_from_describe_instance_types(world: World) -> None:
    lim = world.provider.instance_limits("m5.large")
    assert (lim.max_enis, lim.ips_per_eni, lim.source, lim.max_pods) == (3, 10, "api", 29)
    assert (lim.ips_per_call, lim.ips_at_create, lim.pods_on_primary_eni) == (9, 9, True)
    calls = world.provider.calls["DescribeInstanceTypes"]
    world.provider.instance_limits("m5.large")
    assert world.provider.calls["DescribeInstanceTypes"] == calls  # cached
    # one unknown type does not lose the others (EC2 refuses the whole call for it)
    got = world.provider.fetch_instance_types(["c5.large", "x9.nosuch", "t3.medium"])
    assert {t: (v.max_enis, v.ips_per_eni, v.max_pods) for t, v in got.items()} == {
        "c5.large": (3, 10, 29), "t3.medium": (3, 6, 17)}
    with pytest.raises(NotFound):  # unknown to EC2 and to the bundled table
        world.provider.instance_limits("x9.nosuch")


def test_subnets_and_security_groups(world: World) -> None:
    [vsw] = world.provider.describe_vswitches([world.subnet])
    truth = world.ec2.describe_subnets(SubnetIds=[world.subnet])["Subnets"][0]
    assert (vsw.vswitch_id, vsw.vpc_id, vsw.zone_id, vsw.cidr) == (
        world.subnet, world.vpc, ZONE, "10.0.1.0/24")
    assert vsw.available_ips == truth["AvailableIpAddressCount"] > 0
    assert vsw.gateway == "10.0.1.1"  # EC2's router, not ECS's .253
    with pytest.raises(NotFound):
        world.provider.describe_vswitches([world.subnet, "subnet-0000000000000dead"])
    groups = world.provider.describe_security_groups([world.sg, "sg-0000000000000dead"])
    assert [(g.security_group_id, g.vpc_id) for g in groups] == [(world.sg, world.vpc)]


def test_eni_lifecycle(world: World) -> None:
    p, node = world.provider, world.instances[0]
    tags = {"eniway.io/creator": "eniway", "eniway.io/cluster": "c1"}
    eni = p.create_eni(world.subnet, [world.sg], tags, description="eniway pod ENI",
                       secondary_ip_count=3, client_token="tok-1", delete_on_release=True)
    truth = world.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[eni.eni_id])["NetworkInterfaces"][0]
    assert truth["Description"] == "eniway pod ENI"
    assert {t["Key"]: t["Value"] for t in truth["TagSet"]} == tags  # tagged at creation
    assert (eni.status, eni.type, eni.vswitch_id, eni.vpc_id, eni.zone_id) == (
        "Available", "Secondary", world.subnet, world.vpc, ZONE)
    assert len(eni.private_ips) == 3 and eni.primary_ip not in eni.private_ips
    assert eni.mac == truth["MacAddress"] and eni.security_group_ids == (world.sg,)
    assert eni.tags == tags

    assert [e.eni_id for e in p.describe_enis(tags=tags)] == [eni.eni_id]
    assert [e.eni_id for e in p.describe_enis(tags=tags, status="Available")] == [eni.eni_id]
    assert p.describe_enis(tags={"eniway.io/cluster": "other"}) == []

    p.attach_eni(eni.eni_id, node)
    [cur] = p.describe_enis(eni_ids=[eni.eni_id])
    assert (cur.status, cur.instance_id, cur.device_index, cur.type) == (
        "InUse", node, 1, "Secondary")
    # the wish at creation goes on the attachment (moto accepts the request but keeps no
    # DeleteOnTermination: the call is what can be checked here)
    assert p.calls["ModifyNetworkInterfaceAttribute"] == 1
    assert p.describe_enis(tags=tags, status="Available") == []
    second = p.create_eni(world.subnet, [world.sg], tags)
    p.attach_eni(second.eni_id, node)
    on_node = {e.eni_id: e for e in p.describe_enis(instance_id=node)}
    assert on_node[second.eni_id].device_index == 2  # the next free one
    assert p.calls["ModifyNetworkInterfaceAttribute"] == 1  # no wish, no call
    primary = [e for e in on_node.values() if e.type == "Primary"]
    assert len(primary) == 1 and primary[0].device_index == 0
    info = p.describe_instance(node)
    assert set(info.eni_ids) == set(on_node)

    [before] = p.describe_enis(eni_ids=[eni.eni_id])
    got = p.assign_ips(eni.eni_id, 4, client_token="ignored-by-ec2")
    [cur] = p.describe_enis(eni_ids=[eni.eni_id])
    new = set(cur.private_ips) - set(before.private_ips)
    assert len(new) == 4 and len(cur.private_ips) == 7
    # EC2 answers with the new IPs; moto echoes every address of the ENI, which the
    # provider narrows to its secondary IPs: the new ones, never the primary
    assert new <= set(got) <= set(cur.private_ips) and cur.primary_ip not in got
    gone = sorted(new)[:2]
    p.unassign_ips(eni.eni_id, gone)
    [cur] = p.describe_enis(eni_ids=[eni.eni_id])
    assert not set(gone) & set(cur.private_ips) and len(cur.private_ips) == 5

    sg2 = world.ec2.create_security_group(GroupName="more", Description="more",
                                          VpcId=world.vpc)["GroupId"]
    p.modify_eni(eni.eni_id, security_group_ids=[world.sg, sg2], description="changed",
                 delete_on_release=False)
    [cur] = p.describe_enis(eni_ids=[eni.eni_id])
    assert set(cur.security_group_ids) == {world.sg, sg2}
    assert p.calls["ModifyNetworkInterfaceAttribute"] == 4  # one attribute a call
    truth = world.ec2.describe_network_interfaces(
        NetworkInterfaceIds=[eni.eni_id])["NetworkInterfaces"][0]
    assert truth["Description"] == "changed"

    p.detach_eni(eni.eni_id, node)
    [cur] = p.describe_enis(eni_ids=[eni.eni_id])
    assert (cur.status, cur.instance_id, cur.device_index) == ("Available", "", None)
    p.detach_eni(eni.eni_id, node)  # already detached: fine
    third = p.create_eni(world.subnet, [world.sg], tags)
    p.attach_eni(third.eni_id, node)  # index 1 is free again
    assert p.describe_enis(eni_ids=[third.eni_id])[0].device_index == 1
    p.delete_eni(eni.eni_id)
    assert p.describe_enis(eni_ids=[eni.eni_id]) == []
    with pytest.raises(NotFound):
        p.delete_eni(eni.eni_id)  # a first attempt on a gone ENI says so
    with pytest.raises(NotFound):
        p.detach_eni(eni.eni_id, node)


def test_enis_by_id_in_chunks_and_by_tag(world: World,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """(moto answers DescribeNetworkInterfaces in one page whatever MaxResults says: the
    paging loop is exercised by DescribeInstances above.)"""
    tags = {"eniway.io/cluster": "paged"}
    made = [world.provider.create_eni(world.subnet, [world.sg], tags).eni_id
            for _ in range(7)]
    world.provider.create_eni(world.subnet, [world.sg], {"eniway.io/cluster": "other"})
    monkeypatch.setattr(aws, "MAX_RESULTS", 5)
    assert sorted(e.eni_id for e in world.provider.describe_enis(tags=tags)) == sorted(made)
    monkeypatch.setattr(aws, "IDS_PER_FILTER", 3)
    before = world.provider.calls["DescribeNetworkInterfaces"]
    got = world.provider.describe_enis(eni_ids=[*made, "eni-0000000000000dead"])
    assert sorted(e.eni_id for e in got) == sorted(made)  # the missing one left out
    assert world.provider.calls["DescribeNetworkInterfaces"] == before + 3  # 8 ids, 3 a call


def test_errors_come_typed(world: World) -> None:
    p = world.provider
    with pytest.raises(NotFound) as e:
        p.create_eni("subnet-0000000000000dead", [world.sg], {})
    assert e.value.code == "InvalidSubnetID.NotFound" and e.value.status == 400
    assert e.value.api == "CreateNetworkInterface"
    eni = p.create_eni(world.subnet, [world.sg], {})
    with pytest.raises(NotFound):
        p.attach_eni(eni.eni_id, "i-0000000000000dead")
    with pytest.raises(InvalidParameter):
        p.assign_ips(eni.eni_id, 0)
    with pytest.raises(InvalidParameter):
        p.unassign_ips(eni.eni_id, [])
    assert p.stats()["failures"]  # counted, not swallowed


def test_max_pods_command_with_cloud_aws(endpoint: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
           "AWS_SECRET_ACCESS_KEY": "secret", "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "HOME": os.environ.get("HOME", "/root")}

    def max_pods(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "eniway_operator.main", "max-pods",
                               *args], capture_output=True, text=True, timeout=120, env=env)

    table = max_pods("-q", "m5.large", "--cloud", "aws")
    assert table.returncode == 0 and table.stdout.strip() == "29", table.stderr
    cloud = max_pods("m5.large", "t3.nano", "--cloud", "aws", "--from-cloud",
                     "--cluster-id", "c", "--region", REGION, "--cloud-endpoint", endpoint)
    assert cloud.returncode == 0, cloud.stderr
    rows = [line.split() for line in cloud.stdout.splitlines()[1:]]
    assert rows == [["m5.large", "3", "10", "29", "api"], ["t3.nano", "2", "2", "4", "api"]]
