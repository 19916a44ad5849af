"""The real node agent, run as a process with the chart's agent ServiceAccount, does its whole
API job and is refused nothing: it syncs its ENIs and pool, heartbeats and acknowledges a
release in status.agent, creates the PodIP on a CNI ADD run through the installed binary and
deletes it on DEL.

The node is a network namespace holding a link with the ENI's MAC (the cloud is not
needed here: the ENI object is written as the operator would). Needs root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_rbac import install_chart_rbac

from eniway_operator.testing import wait_for
from localcluster import REPO, LocalCluster, free_port

sys.path.insert(0, str(REPO / "hack"))
from cniexec import CNIRuntime

pytestmark = pytest.mark.cluster

NS = "eniway-agent-live"
NODE = "agent-live-node"
ENI = "eni-chartlive01"
MAC = "00:16:3e:c4:a7:01"
IPS = ["10.77.0.20", "10.77.0.21", "10.77.0.22"]
API = "/apis/network.eniway.io/v1"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


def _wait(cond: Callable[[], Any], what: str, log: Path, timeout: float = 30) -> Any:
    return wait_for(cond, timeout, what, 0.2, detail=lambda: "agent log:\n" + _tail(log))

def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def node_netns(root: None) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    node, pod = f"chart-node-{suffix}", f"chart-pod-{suffix}"
    _sh("ip", "netns", "add", node)
    _sh("ip", "netns", "add", pod)
    try:
        _sh("ip", "-n", node, "link", "set", "lo", "up")
        # The ENI: a veth (no dummy driver on every kernel) with the ENI's MAC.
        _sh("ip", "-n", node, "link", "add", "eth1", "address", MAC, "type", "veth",
            "peer", "name", "eth1p")
        _sh("ip", "-n", node, "link", "set", "eth1p", "up")
        yield node, pod
    finally:
        _sh("ip", "netns", "del", pod, check=False)
        _sh("ip", "netns", "del", node, check=False)


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    c = LocalCluster().start()
    try:
        yield c
    finally:
        c.stop()


def test_agent_does_its_job_with_the_charts_rights(own_cluster: LocalCluster,
                                                   node_netns: tuple[str, str],
                                                   tmp_path: Path) -> None:
    cluster, (netns, pod_netns) = own_cluster, node_netns
    rbac = install_chart_rbac(cluster, namespace=NS, release="eniway-agent-live",
                              with_config=False)
    # What the operator would have written: the pool and an InUse ENI with free IPs.
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
        {"apiVersion": "network.eniway.io/v1", "kind": "ENIPool", "metadata": {"name": NODE},
         "spec": {"nodeName": NODE, "instanceId": "i-chartlive01"}},
        {"apiVersion": "network.eniway.io/v1", "kind": "ENI",
         "metadata": {"name": ENI, "labels": {"network.eniway.io/node": NODE}},
         "spec": {"nodeName": NODE, "instanceId": "i-chartlive01", "deviceIndex": 1,
                  "macAddress": MAC, "vSwitchId": "vsw-chartlive01", "vSwitchCidr":
                  "10.77.0.0/24", "gatewayIP": "10.77.0.1", "primaryIP": "10.77.0.10",
                  "mtu": 1500}}]}))
    code, body = cluster.request("PATCH", f"{API}/enis/{ENI}/status", {"status": {
        "phase": "InUse", "ipCount": len(IPS), "freeCount": len(IPS),
        "ips": [{"ip": ip, "state": "free"} for ip in IPS]}},
        content_type="application/merge-patch+json")
    assert code == 200, body
    code, pod = cluster.request("POST", "/api/v1/namespaces/default/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0"},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]}})
    assert code == 201, pod
    pod_uid = str(pod["metadata"]["uid"])

    d = tmp_path
    _sh("eniway", "install-cni", "--bin-dir", str(d / "bin"), "--conf-dir", str(d / "net.d"),
        "--lib-dir", str(d / "lib"), "--socket", str(d / "run" / "eniway.sock"),
        "--state-dir", str(d / "state"), "--chain", "[]")
    log = d / "agent.log"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "cni_plugin.agent.main", "--node-name", NODE,
             "--kubeconfig", str(rbac.agent_kubeconfig), "--socket", str(d / "run/eniway.sock"),
             "--state-dir", str(d / "state"), "--netns", netns,
             "--metrics-addr", f"127.0.0.1:{free_port()}", "--heartbeat-interval", "1",
             "--cooldown", "0", "--gc-interval", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        def agent_status() -> dict[str, Any]:
            code, pool = cluster.request("GET", f"{API}/enipools/{NODE}")
            assert code == 200
            return dict((pool.get("status") or {}).get("agent") or {})

        _wait(lambda: agent_status().get("ready") and agent_status().get("heartbeat"),
              "status.agent ready with a heartbeat", log)

        # Release handshake: a free IP listed for release is acknowledged in status.agent.
        code, _ = cluster.request("PATCH", f"{API}/enipools/{NODE}", {
            "spec": {"release": {"ips": [IPS[2]]}}},
            content_type="application/merge-patch+json")
        assert code == 200
        _wait(lambda: IPS[2] in (agent_status().get("acknowledged") or []),
              "release acknowledged", log)

        # A pod through the installed CNI binary, as a runtime runs it.
        runtime = CNIRuntime(d / "net.d" / "10-eniway.conflist", [d / "bin"], d / "cache",
                             node_netns=netns)
        args = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0",
                "K8S_POD_UID": pod_uid, "K8S_POD_INFRA_CONTAINER_ID": "c0ffee01"}
        result = runtime.add("c0ffee01", f"/run/netns/{pod_netns}", args=args)
        ip = result["ips"][0]["address"].split("/")[0]
        assert ip in IPS[:2]

        def podip() -> dict[str, Any] | None:
            code, obj = cluster.request("GET", f"{API}/namespaces/default/podips/web-0")
            return obj if code == 200 else None

        created = _wait(podip, "PodIP created by the agent", log)
        assert created["spec"]["ip"] == ip and created["spec"]["eniId"] == ENI
        assert created["spec"]["nodeName"] == NODE
        _wait(lambda: ip in (agent_status().get("allocated") or []), "allocated published", log)

        runtime.delete("c0ffee01", f"/run/netns/{pod_netns}", args=args)
        _wait(lambda: podip() is None, "PodIP deleted by the agent", log)
        assert agent.poll() is None, "agent exited"
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
    text = log.read_text(errors="replace")
    for refused in ("403", "Forbidden", "forbidden", "permission"):
        assert refused not in text, f"agent was refused something:\n{text[-3000:]}"
