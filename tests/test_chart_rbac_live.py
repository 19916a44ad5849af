"""The real operator, run as a process with the chart's operator ServiceAccount and ConfigMap
(installed by chart_rbac), against the emulator: it does its job (pool with limits, warm ENIs
attached and InUse, the leader Lease held) and is never refused anything along the way.

A control plane of its own, so no other test's Nodes or ENIs are in its sight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_rbac import install_chart_rbac

from eniway_operator.testing import wait_for
from localcluster import LocalCluster, free_port

pytestmark = pytest.mark.cluster

NS = "eniway-live"
NODE = "live-node-a"
ZONE = "cn-hangzhou-i"


def _wait(cond: Callable[[], Any], what: str, timeout: float, log: Path) -> Any:
    return wait_for(cond, timeout, what, 0.5, detail=lambda: "operator log:\n" + _tail(log))

def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    c = LocalCluster().start()
    try:
        yield c
    finally:
        c.stop()


def test_operator_does_its_job_with_the_charts_rights(own_cluster: LocalCluster,
                                                      cloudsim: Any, tmp_path: Path) -> None:
    cluster = own_cluster
    topo = cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/20"]}, vpc_cidr="10.0.0.0/16")
    inst = cloudsim.admin.create_instance("ecs.g6.xlarge", topo.vswitch_ids(ZONE)[0],
                                          [topo.security_group_id], name=NODE)
    rbac = install_chart_rbac(cluster, namespace=NS, release="eniway-live",
                              values={"clusterId": "live", "pool": {"min_pool_size": 3}})
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"node.kubernetes.io/instance-type": "ecs.g6.xlarge",
                                              "topology.kubernetes.io/zone": ZONE}},
        "spec": {"providerID": inst["provider_id"]}}))

    log = tmp_path / "operator.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "ALIBABA"))}
    env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = cloudsim.access_key_secret
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "eniway_operator.main",
             "--kubeconfig", str(rbac.operator_kubeconfig), "--namespace", rbac.namespace,
             "--configmap", rbac.configmap, "--lease-name", str(rbac.lease_name),
             "--cluster-id", "live", "--cloud", "cloudsim", "--cloud-endpoint", cloudsim.endpoint,
             "--region", cloudsim.region, "--access-key-id", cloudsim.access_key_id,
             "--metrics-port", str(port), "--gc-interval", "5", "--debounce", "0.1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        def pool() -> dict[str, Any] | None:
            got = cluster.kubectl("get", "enipool", NODE, "-o", "json", check=False)
            if got.returncode:
                return None
            obj: dict[str, Any] = json.loads(got.stdout)
            return obj if (obj.get("status") or {}).get("limits") else None

        limits = _wait(pool, "ENIPool with limits", 90, log)["status"]["limits"]
        assert limits["enis"] == 3 and limits["ipsPerENI"] == 10

        def warm_enis() -> list[dict[str, Any]]:
            items = json.loads(cluster.kubectl("get", "enis", "-o", "json").stdout)["items"]
            return [e for e in items if e["spec"]["nodeName"] == NODE
                    and not e["spec"].get("primary")
                    and (e.get("status") or {}).get("phase") == "InUse"
                    and (e["status"].get("freeCount") or 0) >= 3]

        eni = _wait(warm_enis, "a secondary ENI InUse with 3 free IPs", 90, log)[0]
        in_cloud = {e["eni_id"]: e for e in cloudsim.admin.instance(inst["instance_id"])["enis"]}
        assert in_cloud[eni["metadata"]["name"]]["status"] == "InUse"
        assert in_cloud[eni["metadata"]["name"]]["tags"].get("eniway.io/cluster") == "live"
        lease = json.loads(cluster.kubectl("-n", NS, "get", "lease", str(rbac.lease_name),
                                           "-o", "json").stdout)
        assert lease["spec"]["holderIdentity"]
        assert proc.poll() is None, "operator exited"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text(errors="replace")
    for refused in ("403", "Forbidden", "forbidden", "permission"):
        assert refused not in text, f"operator was refused something:\n{text[-3000:]}"
