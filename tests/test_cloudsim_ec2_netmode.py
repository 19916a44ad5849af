"""Network mode for an aws-flavoured VPC, driven through boto3: the router at the
subnet's network address + 1, ENI veths plugged on attach, and a secondary IP of an
attached ENI reachable through the VPC (the source check as for aliyun VPCs)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from test_cloudsim_netmode import link_by_mac, ping, route_secondary, sh, wait_for

from eniway_cloudsim.testing import SimHandle, start_in_process

pytestmark = pytest.mark.netns
ZONE = "us-east-1a"


@pytest.fixture
def awsnet(root: None) -> Iterator[tuple[SimHandle, str]]:
    import secrets

    from eniway_cloudsim.netmode import NetMode

    tag = "cse" + secrets.token_hex(3)
    handle = start_in_process(network=NetMode(prefix=tag + "-"))
    try:
        yield handle, tag
    finally:
        handle.close(teardown_network=True)
        for ns in sh("ip", "netns", "list").stdout.split():
            if ns.startswith(tag):
                sh("ip", "netns", "del", ns, check=False)


def test_aws_secondary_ip_is_reachable_through_the_vpc(awsnet: tuple[SimHandle, str]) -> None:
    sim, tag = awsnet
    topo = sim.bootstrap_aws({ZONE: ["10.60.0.0/24"]}, vpc_cidr="10.60.0.0/16")
    subnet = topo.vswitch_ids(ZONE)[0]
    gw = "10.60.0.1"
    ns_a, ns_b = f"{tag}-node-a", f"{tag}-node-b"
    a = sim.admin.create_instance("m5.large", subnet, [topo.security_group_id], netns=ns_a)
    b = sim.admin.create_instance("m5.large", subnet, [topo.security_group_id], netns=ns_b)
    vpc_ns = f"{tag}-{topo.vpc_id}"
    assert os.path.exists(f"/run/netns/{vpc_ns}")
    assert link_by_mac(ns_a, a["enis"][0]["mac"]) == "eth0"
    assert ping(ns_a, gw), "the VPC router answers at network + 1"
    assert ping(ns_a, b["primary_ip"])

    ec2 = sim.ec2_client()
    eni = ec2.create_network_interface(SubnetId=subnet, Groups=[topo.security_group_id])[
        "NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                 InstanceId=a["instance_id"], DeviceIndex=1)
    dev = wait_for(lambda: link_by_mac(ns_a, eni["MacAddress"]), "ENI veth in node A")
    assert dev == "eth1"
    s1 = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                         SecondaryPrivateIpAddressCount=1)[
        "AssignedPrivateIpAddresses"][0]["PrivateIpAddress"]
    route_secondary(ns_a, dev, s1, gw)
    assert ping(ns_b, s1), "an aws ENI's secondary IP is reachable through the VPC"
    # the same reply leaving the primary ENI fails the source check
    sh("ip", "-n", ns_a, "route", "replace", "default", "via", gw, "dev", "eth0", "onlink",
       "table", "100")
    assert not ping(ns_b, s1)
    sh("ip", "-n", ns_a, "route", "replace", "default", "via", gw, "dev", dev, "onlink",
       "table", "100")
    ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                      PrivateIpAddresses=[s1])
    assert not ping(ns_b, s1)
    att = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni["NetworkInterfaceId"]])[
        "NetworkInterfaces"][0]["Attachment"]["AttachmentId"]
    ec2.detach_network_interface(AttachmentId=att)
    wait_for(lambda: link_by_mac(ns_a, eni["MacAddress"]) is None, "veth removed on detach")
