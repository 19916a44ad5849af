"""``helm install``, ``upgrade`` and ``uninstall`` of the chart against the real apiserver.

There is no kubelet: pods are created (which proves their specs pass admission) but never
run. A Node object is registered so the DaemonSet controller creates an agent pod too.
The tests follow one release through its life, in file order: install, upgrade, uninstall.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_rbac import CHART, helm

from eniway_operator.testing import wait_for
from localcluster import LocalCluster

pytestmark = pytest.mark.cluster

NS = "eniway-helm"
RELEASE = "ehelm"
FULL = "ehelm-eniway"
NODE = "chart-test-node"
SELECTOR = f"app.kubernetes.io/instance={RELEASE}"
NAMESPACED = "deployments,daemonsets,replicasets,pods,serviceaccounts,roles,rolebindings," \
             "configmaps,services"


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    wait_for(cond, timeout, what, 0.5)


def _get(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", *args, "-o", "json").stdout))


def _names(cluster: LocalCluster, kinds: str, *ns: str) -> set[str]:
    out = cluster.kubectl("get", kinds, *ns, "-l", SELECTOR, "-o", "name").stdout
    return set(out.split())


def _helm(cluster: LocalCluster, *args: str) -> str:
    out = helm(*args, kubeconfig=cluster.kubeconfig, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def release(cluster: LocalCluster) -> Iterator[LocalCluster]:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"kubernetes.io/os": "linux",
                                              "kubernetes.io/hostname": NODE}}}))
    try:
        yield cluster
    finally:
        helm("uninstall", RELEASE, "-n", NS, "--no-hooks", kubeconfig=cluster.kubeconfig,
             check=False)
        cluster.kubectl("delete", "node", NODE, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false",
                        check=False)


def _pods(cluster: LocalCluster, component: str) -> list[dict[str, Any]]:
    items = _get(cluster, "pods", "-n", NS, "-l",
                 f"{SELECTOR},app.kubernetes.io/component={component}")["items"]
    return list(items)


def test_install_creates_everything(release: LocalCluster) -> None:
    cluster = release
    out = _helm(cluster, "install", RELEASE, str(CHART), "-n", NS, "--create-namespace")
    assert "kubectl get enipools" in out  # NOTES.txt
    names = _names(cluster, NAMESPACED, "-n", NS)
    expected = {f"deployment.apps/{FULL}-operator", f"daemonset.apps/{FULL}-agent",
                f"serviceaccount/{FULL}-operator", f"serviceaccount/{FULL}-agent",
                f"role.rbac.authorization.k8s.io/{FULL}-operator",
                f"rolebinding.rbac.authorization.k8s.io/{FULL}-operator",
                f"configmap/{FULL}-config"}
    assert expected <= names, expected - names
    cluster_names = _names(cluster, "clusterroles,clusterrolebindings")
    assert cluster_names == {
        f"clusterrole.rbac.authorization.k8s.io/{FULL}-operator",
        f"clusterrole.rbac.authorization.k8s.io/{FULL}-agent",
        f"clusterrolebinding.rbac.authorization.k8s.io/{FULL}-operator",
        f"clusterrolebinding.rbac.authorization.k8s.io/{FULL}-agent"}
    # The controllers turned the templates into pods: the specs passed admission
    # (priority classes, host network and paths, capabilities, security contexts).
    _wait(lambda: len(_pods(cluster, "operator")) == 2, "two operator pods")
    _wait(lambda: len(_pods(cluster, "agent")) == 1, "one agent pod for the node")
    agent = _pods(cluster, "agent")[0]
    assert agent["spec"]["priority"] >= 2000001000  # system-node-critical
    assert agent["spec"]["hostNetwork"] is True
    affinity = json.dumps(agent["spec"].get("affinity", {}))
    assert NODE in affinity  # the DaemonSet controller pinned it to our node
    status = json.loads(_helm(cluster, "status", RELEASE, "-n", NS, "-o", "json"))
    assert status["info"]["status"] == "deployed" and status["version"] == 1


def test_upgrade_changes_what_it_should(release: LocalCluster) -> None:
    cluster = release
    before = _get(cluster, "deployment", f"{FULL}-operator", "-n", NS)
    checksum = before["spec"]["template"]["metadata"]["annotations"]["checksum/cloud"]
    agent_before = _get(cluster, "daemonset", f"{FULL}-agent", "-n", NS)
    _helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values",
          "--set", "operator.replicas=3", "--set", "pool.max_pool_size=9",
          "--set", "cloud.provider=cloudsim", "--set", "cloud.credentials.existingSecret=ak")
    dep = _get(cluster, "deployment", f"{FULL}-operator", "-n", NS)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["template"]["metadata"]["annotations"]["checksum/cloud"] != checksum
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["cloud-credentials"]["secret"]["secretName"] == "ak"
    assert "ENIWAY_CLOUD_CREDENTIALS_DIR" in env
    cm = _get(cluster, "configmap", f"{FULL}-config", "-n", NS)
    assert yaml.safe_load(cm["data"]["config.yaml"])["max_pool_size"] == 9
    assert cm["data"]["cloud-provider"] == "cloudsim"
    names = _names(cluster, "deployments,services", "-n", NS)
    assert {f"deployment.apps/{FULL}-cloudsim", f"service/{FULL}-cloudsim"} <= names
    ds = _get(cluster, "daemonset", f"{FULL}-agent", "-n", NS)
    # On the emulator there is no cloud metadata service to check ENIs against: the
    # agent loses --metadata-url (and the --cloud saying its layout) and nothing else.
    args_before = agent_before["spec"]["template"]["spec"]["containers"][0]["args"]
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    check = {"--metadata-url=http://100.100.100.200", "--cloud=aliyun"}
    assert check <= set(args_before)
    assert [a for a in args_before if a not in check] == args
    agent_gen = ds["metadata"]["generation"]
    _wait(lambda: len(_pods(cluster, "operator")) >= 3, "three operator pods")

    _helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NS, "--reuse-values",
          "--set", "agent.mtu=1450", "--set", "operator.leaderElection.leaseName=other-lease")
    ds = _get(cluster, "daemonset", f"{FULL}-agent", "-n", NS)
    assert ds["metadata"]["generation"] == agent_gen + 1
    assert "--mtu=1450" in ds["spec"]["template"]["spec"]["containers"][0]["args"]
    role = _get(cluster, "role", f"{FULL}-operator", "-n", NS)
    assert ["other-lease"] in [r.get("resourceNames") for r in role["rules"]]

    # Back to the defaults: the emulator goes away again.
    _helm(cluster, "upgrade", RELEASE, str(CHART), "-n", NS, "--reset-values")
    assert not {n for n in _names(cluster, "deployments,services", "-n", NS) if "cloudsim" in n}
    op = _get(cluster, "deployment", f"{FULL}-operator", "-n", NS)
    names_of_env = {e["name"] for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" not in names_of_env
    assert "ENIWAY_CLOUD_CREDENTIALS_DIR" not in names_of_env
    assert _get(cluster, "deployment", f"{FULL}-operator", "-n", NS)["spec"]["replicas"] == 2
    status = json.loads(_helm(cluster, "status", RELEASE, "-n", NS, "-o", "json"))
    assert status["version"] == 4


def test_uninstall_hook_is_admitted_then_skippable(release: LocalCluster) -> None:
    """The pre-delete hook's objects pass admission and its Job is made into a pod (which
    cannot run here: no kubelet), so ``helm uninstall`` waits for it, times out and keeps
    the release; the command itself is tested in test_uninstall.py."""
    cluster = release
    out = helm("uninstall", RELEASE, "-n", NS, "--timeout=10s", kubeconfig=cluster.kubeconfig,
               check=False)
    assert out.returncode != 0 and "timed out" in out.stderr, out.stdout + out.stderr
    job = _get(cluster, "job", f"{FULL}-uninstall", "-n", NS)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["eniway-operator", "uninstall"]
    assert f"--scale-down={FULL}-operator" in container["args"]
    assert pod["serviceAccountName"] == f"{FULL}-uninstall" and pod["hostNetwork"] is True
    _wait(lambda: bool(_get(cluster, "pods", "-n", NS, "-l",
                            "app.kubernetes.io/component=uninstall")["items"]),
          "the hook Job's pod")
    assert _names(cluster, "deployments", "-n", NS)  # nothing was uninstalled


def test_uninstall_leaves_the_cluster_clean(release: LocalCluster) -> None:
    cluster = release
    _helm(cluster, "uninstall", RELEASE, "-n", NS, "--no-hooks")
    # A hook that did not succeed leaves its objects (as Helm does): removed by label.
    hook = f"{SELECTOR},app.kubernetes.io/component=uninstall"
    cluster.kubectl("delete", "jobs,pods,serviceaccounts,roles,rolebindings", "-n", NS,
                    "-l", hook, "--wait=false")
    cluster.kubectl("delete", "clusterroles,clusterrolebindings", "-l", hook)
    # Garbage collection removes the ReplicaSets and pods the controllers made.
    _wait(lambda: not _names(cluster, NAMESPACED, "-n", NS), "namespaced objects gone", 90)
    _wait(lambda: not _names(cluster, "clusterroles,clusterrolebindings"),
          "cluster objects gone")
    leftovers = cluster.kubectl("get", "all,cm,sa,roles,rolebindings,secrets", "-n", NS,
                                "-o", "name").stdout.split()
    # Only what Kubernetes itself puts in every namespace remains.
    assert all(n.startswith(("serviceaccount/default", "secret/default-token-",
                             "configmap/kube-root-ca.crt")) for n in leftovers), leftovers
    releases = helm("list", "-A", "-q", kubeconfig=cluster.kubeconfig).stdout.split()
    assert RELEASE not in releases
    # As Helm does: CRDs (and so custom resources) stay.
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    for crd in sorted(p.name for p in (CHART / "crds").glob("*.yaml")):
        group, plural = crd.removesuffix(".yaml").split("_", 1)
        assert f"{plural}.{group}" in crds


def test_install_fails_cleanly_on_bad_values(release: LocalCluster, tmp_path: Path) -> None:
    cluster = release
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump({"pool": {"max_eni": 100}}))
    out = helm("install", "ebad", str(CHART), "-n", NS, "--create-namespace", "-f", str(values),
               kubeconfig=cluster.kubeconfig, check=False)
    assert out.returncode != 0 and "max_eni" in out.stderr
    assert "ebad" not in helm("list", "-A", "-q", kubeconfig=cluster.kubeconfig).stdout.split()


def test_install_on_a_bare_cluster_brings_the_crds() -> None:
    """A control plane without eniway's CRDs: ``helm install`` installs them from the
    chart's crds/ before the rest, they are served, and ``helm uninstall`` keeps them."""
    bare = LocalCluster(controllers=False, install_crds=False).start()
    try:
        assert "network.eniway.io" not in bare.kubectl("get", "crd", "-o", "name").stdout
        _helm(bare, "install", "bare", str(CHART), "-n", "eniway-bare", "--create-namespace")
        names = bare.kubectl("get", "crd", "-o", "name").stdout.split()
        expected = {f"customresourcedefinition.apiextensions.k8s.io/{p}.network.eniway.io"
                    for p in ("enis", "enipools", "podips")}
        assert expected <= set(names)
        bare.kubectl("wait", "--for=condition=Established", "--timeout=60s", *expected)
        assert bare.kubectl("get", "enipools").returncode == 0
        _helm(bare, "uninstall", "bare", "-n", "eniway-bare", "--no-hooks")
        assert expected <= set(bare.kubectl("get", "crd", "-o", "name").stdout.split())
    finally:
        bare.stop()
