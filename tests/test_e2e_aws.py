"""End to end on the emulator's EC2 API: the operator's aws provider (boto3, SigV4), agents
reading their instance from IMDSv2, real nodes (containerd, kubelet v1.20.2) in an aws VPC
whose subnets route at .1, pods served from the primary ENI's secondary IPs as well as
from secondary ENIs (EKS's max-pods formula), real packets with the VPC's source check
on. One set of nodes serves the module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from clusterbox import AWS_REGION, AWS_ZONE, NAMESPACE, ClusterBox, NodeSpec, wait_for
from cni_plugin import contract

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

# t3.small: 3 ENIs x 4 IPv4 (primary included): 9 pod IPs, max pods 3 x 3 + 2 = 11.
NODES = [NodeSpec("aws-a", "t3.small"), NodeSpec("aws-b", "m5.large")]
APP = "web"


@pytest.fixture(scope="module")
def box() -> Iterator[ClusterBox]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces)")
    b = ClusterBox(NODES, cloud_name="aws", vswitch_cidrs=("10.0.1.0/24",),
                   pool_config={"min_pool_size": 2, "max_pool_size": 4, "ip_cooldown": "2s",
                                "empty_eni_reclaim_after": "5s"})
    b.start()
    try:
        wait_for(lambda: len(b.pools()) == 2 and all(
            p.get("status", {}).get("counts", {}).get("free", 0) >= 2
            for p in b.pools().values()), 180, "warm pools")
        yield b
    finally:
        b.stop()


def _ec2_ips(box: ClusterBox) -> dict[str, set[str]]:
    """ENI id -> secondary private IPs, as EC2 itself answers (boto3, not our provider)."""
    assert box.cloud is not None
    out: dict[str, set[str]] = {}
    for ni in box.cloud.ec2_client(max_attempts=3).describe_network_interfaces()[
            "NetworkInterfaces"]:
        out[ni["NetworkInterfaceId"]] = {a["PrivateIpAddress"]
                                         for a in ni["PrivateIpAddresses"] if not a["Primary"]}
    return out


def test_nodes_are_ec2_instances_with_eks_max_pods(box: ClusterBox) -> None:
    for spec in NODES:
        node = box.get("node", spec.name)
        inst = box.node_by_name[spec.name].instance_id
        assert node["spec"]["providerID"] == f"aws:///{AWS_ZONE}/{inst}"
        ec2 = box.cloud.ec2_client().describe_instance_types(  # type: ignore[union-attr]
            InstanceTypes=[spec.instance_type])["InstanceTypes"][0]["NetworkInfo"]
        eks = ec2["MaximumNetworkInterfaces"] * (ec2["Ipv4AddressesPerInterface"] - 1) + 2
        pool = box.pools()[spec.name]
        assert pool["status"]["limits"]["maxPods"] == eks
        assert node["metadata"]["annotations"][contract.ANNOTATION_MAX_PODS] == str(eks)
        # The agent knows its instance from IMDSv2 and published it.
        agent = pool["status"]["agent"]
        assert agent["instance"]["instanceId"] == inst
        assert agent["instance"]["zone"] == AWS_ZONE


def test_pods_on_primary_and_secondary_enis_talk_across_nodes(box: ClusterBox) -> None:
    box.deployment(APP, 12)  # more than t3.small's primary ENI holds (3)
    pods = box.wait_running(APP, 12)
    enis = {e["metadata"]["name"]: e for e in box.enis()}
    podips = {pi["metadata"]["name"]: pi["spec"] for pi in box.podips()}
    cloud = _ec2_ips(box)
    on_primary, on_secondary = [], []
    for p in pods:
        spec = podips[p["metadata"]["name"]]
        assert spec["ip"] == p["status"]["podIP"]
        assert spec["ip"] in cloud[spec["eniId"]], f"{spec['ip']} not on {spec['eniId']} in EC2"
        assert enis[spec["eniId"]]["spec"]["vSwitchId"].startswith("subnet-")
        (on_primary if enis[spec["eniId"]]["spec"].get("primary") else on_secondary).append(p)
    assert on_primary and on_secondary, "expected pods on both kinds of ENI"
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == len(ips)
    # Primary-ENI pod <-> secondary-ENI pod on the other node, both ways, ping and HTTP.
    src = on_primary[0]
    dst = next(p for p in on_secondary if p["spec"]["nodeName"] != src["spec"]["nodeName"]) \
        if any(p["spec"]["nodeName"] != src["spec"]["nodeName"] for p in on_secondary) \
        else on_secondary[0]
    for a, b in ((src, dst), (dst, src)):
        assert box.ping(a, b["status"]["podIP"], count=2), (a["metadata"]["name"],
                                                          b["status"]["podIP"])
        body = box.fetch(a, f"http://{b['status']['podIP']}:8080/")
        assert body is not None and body.strip() == b["metadata"]["name"]


def test_scale_in_returns_ips_to_ec2_through_the_handshake(box: ClusterBox) -> None:
    box.deployment(APP, 12)
    box.wait_running(APP, 12)
    box.scale(APP, 2)
    box.wait_running(APP, 2)
    assert box.cloud is not None

    def trimmed() -> bool:
        held = {p["status"]["podIP"] for p in box.running_pods(f"app={APP}")}
        cloud = _ec2_ips(box)
        ours = {e["metadata"]["name"] for e in box.enis()}
        total = sum(len(ips) for eni, ips in cloud.items() if eni in ours)
        # each node keeps its pods plus at most max_pool_size (4) free IPs
        return held <= set().union(*cloud.values()) and total <= len(held) + 2 * 4
    wait_for(trimmed, 240, "IPs beyond the pools' max returned to EC2")
    calls = box.cloud.admin.call_counts()["calls"]
    assert calls.get("UnassignPrivateIpAddresses", 0) >= 1, calls
    assert calls.get("AssignPrivateIpAddresses", 0) + calls.get("CreateNetworkInterface", 0) >= 1
    box.kube.kubectl("delete", "deployment", APP)
    wait_for(lambda: not box.pods(f"app={APP}"), 120, "pods gone")


def test_uninstall_gives_every_ip_and_eni_back_to_ec2(box: ClusterBox) -> None:
    """Last in the module: ``eniway-operator uninstall --cloud aws`` deletes this cluster's
    secondary ENIs and unassigns the pool's IPs from the primary ENIs, which stay."""
    assert box.cloud is not None
    wait_for(lambda: not box.pods(f"app={APP}"), 120, "no pods left")
    box.stop_operator()
    ours = {e["metadata"]["name"]: e["spec"] for e in box.enis()}
    primaries = {k for k, v in ours.items() if v.get("primary")}
    assert primaries and any(_ec2_ips(box)[p] for p in primaries), "nothing to give back"
    out = subprocess.run(
        [sys.executable, "-m", "eniway_operator.main", "uninstall",
         f"--kubeconfig={box.kube.kubeconfig}", f"--namespace={NAMESPACE}",
         f"--cluster-id={box.cluster_id}", "--cloud=aws", f"--cloud-endpoint={box.cloud.url}",
         f"--region={AWS_REGION}", "--timeout=60"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "AWS_ACCESS_KEY_ID": box.cloud.access_key_id,
             "AWS_SECRET_ACCESS_KEY": box.cloud.access_key_secret})
    assert out.returncode == 0, out.stdout + out.stderr
    ec2 = box.cloud.ec2_client(max_attempts=3)
    left = ec2.describe_network_interfaces(Filters=[
        {"Name": f"tag:{contract.TAG_CLUSTER}", "Values": [box.cluster_id]}])
    assert left["NetworkInterfaces"] == [], left
    ips = _ec2_ips(box)
    for p in primaries:
        assert p in ips and ips[p] == set(), (p, ips[p])
    assert box.enis() == [] and box.pools() == {}
