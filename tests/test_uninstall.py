"""``eniway-operator uninstall`` against a real apiserver of its own (its CRDs get deleted)
and the emulator through the official SDK: install (CRDs, operator, pods with IPs), then
uninstall as a user would, and check what is left in the cluster and in the cloud."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator.cloud.base import NetworkInterface
from eniway_operator.testing import (
    AgentDouble,
    OperatorProcess,
    delete_pods,
    make_node,
    make_pods,
    wait_for,
)
from eniway_operator.uninstall import (
    EXIT_INCOMPLETE,
    EXIT_REFUSED,
    plan_uninstall,
    primary_pool,
)
from localcluster import LocalCluster

pytestmark = pytest.mark.cluster
ZONE = "cn-hangzhou-i"
NS = "eniway-system"
CLUSTER_ID = "uninstall-test"
CRDS = ("enis.network.eniway.io", "enipools.network.eniway.io", "podips.network.eniway.io")


def _eni(eni_id: str, ips: tuple[str, ...] = (), kind: str = "Secondary",
         cluster: str = CLUSTER_ID) -> NetworkInterface:
    tags = {contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE, contract.TAG_CLUSTER: cluster}
    return NetworkInterface(eni_id, "InUse", kind, "", "vsw-1", "vpc-1", ZONE, "10.0.0.2",
                            ips, "i-1", tags=tags)


def test_plan_keeps_what_pods_use_only_with_force() -> None:
    enis = [_eni("eni-a", ("10.0.0.5",)), _eni("eni-b", ("10.0.0.6",)),
            _eni("eni-p", kind="Primary"), _eni("eni-x", cluster="other")]
    held = {"10.0.0.5": "default/web"}
    plan = plan_uninstall(["eni-p", "eni-a", "eni-a"], enis, held, CLUSTER_ID)
    assert [e.eni_id for e in plan.delete] == ["eni-b"]  # a held one is never deleted
    assert plan.keep == {} and plan.objects == ("eni-a", "eni-p")
    forced = plan_uninstall([], enis, held, CLUSTER_ID, force=True)
    assert [e.eni_id for e in forced.delete] == ["eni-b"]
    assert forced.keep == {"eni-a": ("default/web",)}


def test_plan_gives_back_the_primary_enis_pool_ips_but_held_ones() -> None:
    """EC2: the primary ENI's pool IPs (listed on its object) go back, except a pod's."""
    primary = {"eni-p": ["10.0.0.5", "10.0.0.6", "10.0.0.7"]}
    plan = plan_uninstall(["eni-p"], [], {}, CLUSTER_ID, primary_pool=primary)
    assert plan.unassign == {"eni-p": ("10.0.0.5", "10.0.0.6", "10.0.0.7")}
    assert plan.delete == () and plan.keep == {}
    held = {"10.0.0.6": "default/web"}
    forced = plan_uninstall(["eni-p"], [], held, CLUSTER_ID, force=True, primary_pool=primary)
    assert forced.unassign == {"eni-p": ("10.0.0.5", "10.0.0.7")}
    assert forced.keep == {"eni-p": ("default/web",)}
    resources = [{"metadata": {"name": "eni-p"}, "spec": {"primary": True},
                  "status": {"ips": [{"ip": "10.0.0.5"}]}},
                 {"metadata": {"name": "eni-q"}, "spec": {"primary": True}, "status": {}},
                 {"metadata": {"name": "eni-s"}, "spec": {},
                  "status": {"ips": [{"ip": "10.0.0.9"}]}}]
    assert primary_pool(resources) == {"eni-p": ["10.0.0.5"]}


class World:
    def __init__(self, cluster: LocalCluster, sim: Any, tmp: Path) -> None:
        self.cluster, self.sim, self.tmp = cluster, sim, tmp
        self.api = kube_mod.load_config(str(cluster.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/24"]})
        self.provider = sim.provider()
        for ns in (NS, "default"):
            self.cluster.kubectl("create", "namespace", ns, check=False)
            self.cluster.kubectl("create", "serviceaccount", "default", "-n", ns, check=False)
        cfg = {"security_group_ids": [self.topo.security_group_id], "min_pool_size": 2,
               "vswitches": {ZONE: self.topo.vswitch_ids(ZONE)}, "ip_cooldown": 0}
        self.core.create_namespaced_config_map(NS, {  # type: ignore[arg-type]
            "metadata": {"name": "eniway-config"},
            "data": {"config.yaml": yaml.safe_dump(cfg)}})
        # The chart's Deployment (no controllers here: only its scale is looked at).
        self.apps.create_namespaced_deployment(NS, {  # type: ignore[arg-type]
            "metadata": {"name": "eniway-operator"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "op"}},
                     "template": {"metadata": {"labels": {"app": "op"}},
                                  "spec": {"containers": [{"name": "o", "image": "x"}]}}}})
        self.nodes: dict[str, str] = {}
        for name in ("node-a", "node-b"):
            inst = sim.admin.create_instance("ecs.g6.xlarge", self.topo.vswitch_ids(ZONE)[0],
                                             [self.topo.security_group_id], name=name)
            make_node(self.api, name, inst["provider_id"], "ecs.g6.xlarge", ZONE)
            self.nodes[name] = inst["instance_id"]
        self.operator = OperatorProcess(
            cluster.kubeconfig, CLUSTER_ID, sim.endpoint, sim.region, NS, "eniway-config",
            (sim.access_key_id, sim.access_key_secret), tmp / "operator.log",
            extra=("--lease-duration=6", "--resync=5"))
        self.agent = AgentDouble(self.api, self.nodes, interval=0.1)

    def start_uninstall(self, *args: str) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "eniway_operator.main", "uninstall",
               f"--kubeconfig={self.cluster.kubeconfig}", f"--namespace={NS}",
               f"--cluster-id={CLUSTER_ID}", "--cloud=cloudsim",
               f"--cloud-endpoint={self.sim.endpoint}", f"--region={self.sim.region}",
               "--scale-down=eniway-operator", *args]
        env = {"ALIBABA_CLOUD_ACCESS_KEY_ID": self.sim.access_key_id,
               "ALIBABA_CLOUD_ACCESS_KEY_SECRET": self.sim.access_key_secret,
               "PATH": "/usr/bin:/bin"}
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    @staticmethod
    def finish(run: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        stdout, stderr = run.communicate(timeout=300)
        print(f"$ {' '.join(map(str, run.args))}  (exit {run.returncode})\n{stdout}{stderr}")
        return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)

    def uninstall(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.finish(self.start_uninstall(*args))

    def objects(self, plural: str) -> list[dict[str, Any]]:
        got = cast(dict[str, Any], self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, plural))
        return cast(list[dict[str, Any]], got["items"])

    def replicas(self) -> int:
        scale = self.apps.read_namespaced_deployment_scale("eniway-operator", NS)
        return int(scale.spec.replicas or 0) if scale.spec else 0

    def cloud(self, node: str) -> list[NetworkInterface]:
        return cast(list[NetworkInterface],
                    self.provider.describe_enis(instance_id=self.nodes[node]))

    def secondary(self, node: str) -> list[str]:
        return sorted(e.eni_id for e in self.cloud(node) if e.type != "Primary")

    def tagged(self) -> list[NetworkInterface]:
        return cast(list[NetworkInterface], self.provider.describe_enis(
            tags={contract.TAG_CLUSTER: CLUSTER_ID}))


@pytest.fixture
def world(cloudsim: Any, tmp_path: Path) -> Iterator[World]:
    cluster = LocalCluster(controllers=False).start()
    w: World | None = None
    try:
        w = World(cluster, cloudsim, tmp_path)
        yield w
    finally:
        if w is not None:
            w.agent.stop()
            w.operator.stop()
            print(f"--- operator log ---\n{w.operator.log_tail(30)}")
            w.api.close()
        cluster.stop()


def test_uninstall_frees_the_cloud_and_unblocks_crd_deletion(world: World) -> None:
    w = world
    w.operator.start()
    w.agent.start()
    pods_a = make_pods(w.api, "node-a", 3)
    pods_b = make_pods(w.api, "node-b", 2)
    wait_for(lambda: len(w.agent.held("node-a")) == 3 and len(w.agent.held("node-b")) == 2,
             90, "pods served", detail=w.operator.log_tail)
    wait_for(lambda: w.secondary("node-a") and w.secondary("node-b"), 30, "ENIs attached")
    primaries = sorted(e.eni_id for n in w.nodes for e in w.cloud(n) if e.type == "Primary")
    foreign = w.provider.create_eni(w.topo.vswitch_ids(ZONE)[0], [w.topo.security_group_id],
                                    {"owner": "someone-else"})
    before = {r["metadata"]["name"] for r in w.objects(contract.PLURAL_ENI)}
    assert set(primaries) <= before and all(
        contract.FINALIZER in r["metadata"]["finalizers"] for r in w.objects(contract.PLURAL_ENI))

    # Pods still use eniway: refused, nothing changed.
    out = w.uninstall()
    assert out.returncode == EXIT_REFUSED, out.stdout + out.stderr
    assert "5 pod(s) still use eniway IPs" in out.stdout and "Nothing was changed" in out.stdout
    assert w.replicas() == 2 and w.operator.is_leader()
    assert {r["metadata"]["name"] for r in w.objects(contract.PLURAL_ENI)} == before

    # node-b drained; the operator still runs (its Lease is held): the command gives up
    # after --timeout and scales the Deployment back.
    delete_pods(w.api, pods_b)
    wait_for(lambda: not w.agent.held("node-b"), 30, "node-b PodIPs gone")
    out = w.uninstall("--force", "--timeout=3")
    assert out.returncode == EXIT_INCOMPLETE and "still held" in out.stdout, out.stdout
    assert w.replicas() == 2 and len(w.objects(contract.PLURAL_ENI)) == len(before)

    # The operator stops (what scaling to 0 does to its pods); pods remain on node-a:
    # --force deletes node-b's ENIs, keeps node-a's attached and says so.
    # A replica still terminating (held by a finalizer here) could write ENI objects after
    # they are listed: the command waits until the Deployment's pods are gone.
    w.agent.stop()
    w.operator.stop()
    kept = w.secondary("node-a")
    w.core.create_namespaced_pod(NS, {  # type: ignore[arg-type]
        "metadata": {"name": "op-terminating", "labels": {"app": "op"},
                     "finalizers": ["eniway.test/hold"]},
        "spec": {"automountServiceAccountToken": False,
                 "containers": [{"name": "o", "image": "x"}]}})
    w.core.delete_namespaced_pod("op-terminating", NS)
    secondary_b = w.secondary("node-b")
    run = w.start_uninstall("--force")
    wait_for(lambda: w.replicas() == 0, 30, "scaled to 0")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # nothing moves while the replica is there
        assert run.poll() is None and w.secondary("node-b") == secondary_b
        assert all(e.status == "InUse" for e in w.cloud("node-b"))
    w.cluster.kubectl("patch", "pod", "op-terminating", "-n", NS, "--type=merge",
                      "-p", '{"metadata": {"finalizers": null}}')
    out = w.finish(run)
    assert "no pod of eniway-operator left" in out.stdout, out.stdout
    assert out.returncode == 0, out.stdout + out.stderr
    assert w.replicas() == 0
    for eni_id in kept:
        assert f"kept {eni_id}: still used by default/p-node-a-" in out.stdout
    assert w.secondary("node-b") == [] and w.secondary("node-a") == kept
    assert w.objects(contract.PLURAL_ENI) == [] and w.objects(contract.PLURAL_ENIPOOL) == []

    # Later, node-a drained too: a second run finds its ENIs by their tags alone.
    delete_pods(w.api, pods_a)
    for pip in w.objects(contract.PLURAL_PODIP):  # the agent is gone: stale, holds nothing
        assert pip["spec"]["nodeName"] == "node-a"
    # EIPs on a kept ENI's IPs (NAT mode): this cluster's is released, another's only
    # taken off; the ENI can go only once both are off it.
    eni = next(e for e in w.cloud("node-a") if e.eni_id == kept[0])
    ips = [*eni.private_ips, eni.primary_ip]
    ours = w.provider.allocate_public_ip(5, {contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                                             contract.TAG_CLUSTER: CLUSTER_ID})
    theirs = w.provider.allocate_public_ip(5, {"owner": "someone-else"})
    for eip, ip in ((ours, ips[0]), (theirs, ips[1])):
        w.provider.associate_public_ip(eip.allocation_id, eni.eni_id, ip)
    wait_for(lambda: [p.status for p in w.provider.describe_public_ips(
        [ours.allocation_id, theirs.allocation_id])] == ["InUse", "InUse"], 30, "EIPs InUse")
    out = w.uninstall()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"EIP {ours.allocation_id} ({ours.ip}) released" in out.stdout
    assert w.provider.describe_public_ips([ours.allocation_id]) == []
    assert [p.status for p in w.provider.describe_public_ips([theirs.allocation_id])] == \
        ["Available"]
    for eni_id in kept:
        assert f"deleted {eni_id} (node node-a" in out.stdout
    assert w.tagged() == [] and w.secondary("node-a") == []
    # Primary ENIs and ENIs eniway did not create are untouched.
    assert [e.status for e in w.provider.describe_enis(eni_ids=primaries)] == ["InUse"] * 2
    assert w.provider.describe_enis(eni_ids=[foreign.eni_id])[0].status == "Available"
    # Nothing stuck: the CRDs go at once, and their objects with them.
    w.cluster.kubectl("delete", "crd", *CRDS, "--timeout=60s")
    wait_for(lambda: not any(c in w.cluster.kubectl("get", "crd", "-o", "name").stdout
                             for c in CRDS), 30, "CRDs gone")
    with pytest.raises(ApiException):
        w.objects(contract.PLURAL_ENI)


def test_hook_rbac_grants_what_the_command_calls_and_no_more(cluster: LocalCluster) -> None:
    """The pre-delete hook's ServiceAccount, as the chart renders it, on the real API server:
    every call the command makes is allowed, nothing else asked here is."""
    from chart_rbac import render

    ns = "eniway-hookrbac"
    docs = [d for d in render(namespace=ns, show_only=("templates/uninstall-hook.yaml",))
            if d["kind"] != "Job"]
    cluster.kubectl("create", "namespace", ns, check=False)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    who = f"--as=system:serviceaccount:{ns}:eniway-uninstall"

    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, who, check=False)
        return out.stdout.strip() == "yes"

    try:
        allowed = [("list", "podips.network.eniway.io", "-A"), ("get", "pods", "-n", "x"),
                   ("list", "enis.network.eniway.io"), ("get", "enis.network.eniway.io"),
                   ("patch", "enis.network.eniway.io"), ("delete", "enis.network.eniway.io"),
                   ("list", "enipools.network.eniway.io"),
                   ("delete", "enipools.network.eniway.io"),
                   ("get", "deployments.apps/eniway-operator", "--subresource=scale", "-n", ns),
                   ("list", "pods", "-n", ns),
                   ("patch", "deployments.apps/eniway-operator", "--subresource=scale", "-n",
                    ns),
                   ("create", "leases.coordination.k8s.io", "-n", ns),
                   ("get", "leases.coordination.k8s.io/eniway-operator", "-n", ns),
                   ("update", "leases.coordination.k8s.io/eniway-operator", "-n", ns)]
        denied = [("get", "secrets", "-n", ns), ("create", "enis.network.eniway.io"),
                  ("patch", "enipools.network.eniway.io"), ("delete", "pods", "-n", "x"),
                  ("patch", "deployments.apps/other", "--subresource=scale", "-n", ns),
                  ("update", "deployments.apps/eniway-operator", "-n", ns),
                  ("update", "leases.coordination.k8s.io/other", "-n", ns),
                  ("delete", "customresourcedefinitions.apiextensions.k8s.io")]
        assert [a for a in allowed if not can(*a)] == []
        assert [d for d in denied if can(*d)] == []
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found",
                        input=yaml.safe_dump_all(docs), check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
