"""The kubelet stand-in used by the demo and the e2e tests, proven with Debian's ptp +
host-local: real scheduler, real Deployment controller, real CNI plugins, real packets."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cniexec import CNIRuntime
from eniway_operator.testing import wait_for
from kubelet_standin import KubeletStandin, netns_name
from localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]


@pytest.fixture
def standin(cluster: LocalCluster, tmp_path: Path, root: None) -> Iterator[KubeletStandin]:
    node = f"kl-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", node], check=True)
    subprocess.run(["ip", "-n", node, "link", "set", "lo", "up"], check=True)
    conflist = tmp_path / "10-ptp.conflist"
    conflist.write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "ptpnet",
        "plugins": [{"type": "ptp", "ipMasq": False, "ipam": {
            "type": "host-local", "subnet": "10.250.0.0/24",
            "dataDir": str(tmp_path / "ipam")}}]}))
    rt = CNIRuntime(conflist, [Path("/usr/lib/cni")], tmp_path / "cache", node_netns=node)
    kl = KubeletStandin(str(cluster.kubeconfig), node, rt, provider_id=f"cn-test.i-{node}",
                        node_ip="192.0.2.10").start()
    try:
        yield kl
    finally:
        kl.stop()
        # the cluster is shared by the session: leave no Node for other tests' DaemonSets
        cluster.kubectl("delete", "node", node, "--wait=false", check=False)
        subprocess.run(["ip", "netns", "del", node], check=False)


def test_deployment_pods_get_addresses_and_talk(cluster: LocalCluster,
                                                standin: KubeletStandin) -> None:
    name = f"web-{uuid.uuid4().hex[:5]}"
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {
                        "nodeSelector": {"kubernetes.io/hostname": standin.node_name},
                        "containers": [{"name": "c", "image": "none"}]}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(dep))

    def ips() -> dict[str, str]:
        out = cluster.kubectl("get", "pods", "-l", f"app={name}", "-o", "json").stdout
        pods = json.loads(out)["items"]
        got = {p["metadata"]["uid"]: p["status"].get("podIP", "") for p in pods
               if p["status"].get("phase") == "Running"}
        return got if len(got) == 3 and all(got.values()) else {}

    got = wait_for(ips, 90, "3 running pods with IPs")
    assert len(set(got.values())) == 3
    uids = list(got)
    a, b = uids[0], uids[1]
    ping = subprocess.run(["ip", "netns", "exec", netns_name(a), "ping", "-c", "1", "-W", "2",
                           got[b]], capture_output=True, text=True)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    wait_for(lambda: cluster.kubectl("get", "deploy", name, "-o",
          "jsonpath={.status.readyReplicas}").stdout == "3", 60, "deployment ready")

    cluster.kubectl("scale", "deploy", name, "--replicas=0")
    wait_for(lambda: not json.loads(cluster.kubectl(
        "get", "pods", "-l", f"app={name}", "-o", "json").stdout)["items"], 90, "pods gone")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(netns_name(u) in netns for u in uids)
    assert not standin.pod_ips()
    cluster.kubectl("delete", "deploy", name)


def test_node_registered_ready_with_provider_id(cluster: LocalCluster,
                                                standin: KubeletStandin) -> None:
    node = json.loads(cluster.kubectl("get", "node", standin.node_name, "-o", "json").stdout)
    assert node["spec"]["providerID"] == f"cn-test.i-{standin.node_name}"
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
