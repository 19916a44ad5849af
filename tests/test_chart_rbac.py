"""The chart's RBAC against the real apiserver: each ServiceAccount can do exactly what its
component needs (the rights listed below, no more) and real requests outside its role are
refused."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_rbac import ChartRBAC, install_chart_rbac

from localcluster import LocalCluster

pytestmark = pytest.mark.cluster

NS = "eniway-rbac"
SECRET = "eniway-cloud"
LEASE = "eniway-rbac-leader"
GROUP = "network.eniway.io"

# What each component needs, written down independently of the chart's templates.
# What each component needs, written down from what its code does (kube.py, kopf's
# handlers and indexes, leader.py, kubesync.py), independently of the chart's templates.
OPERATOR_CLUSTER = {
    "nodes": {"get", "list", "watch", "patch"},  # kopf watch, read, max-pods annotation
    "nodes/status": {"patch"},  # exclusive-ENI slots as an extended resource
    "pods": {"list", "watch"},  # kopf index: pending demand per node, exclusive pods
    "pods/status": {"patch"},  # the ExclusiveENIReady condition
    # kopf index: labels exclusive-ENI policies select by; the webhook reads one namespace
    "namespaces": {"get", "list", "watch"},
    # the webhook: each replica adds its CA to the caBundle
    "mutatingwebhookconfigurations.admissionregistration.k8s.io[eniway-rbac-webhook]": {
        "get", "update"},
    f"exclusiveenipolicies.{GROUP}": {"get", "list", "watch"},  # kopf index: policies
    "events": {"create", "patch"},  # Node events, repeats bump the count
    f"enis.{GROUP}": {"get", "list", "watch", "create", "patch", "delete"},
    f"enipools.{GROUP}": {"get", "list", "watch", "create", "patch", "delete"},
    f"enis.{GROUP}/status": {"patch"},
    f"enipools.{GROUP}/status": {"patch"},
    f"podips.{GROUP}": {"get", "list", "watch"},  # kopf index: who holds which IP
    f"podips.{GROUP}/status": {"patch"},  # a pod's public IP and its condition
    "customresourcedefinitions.apiextensions.k8s.io": {"get", "list", "watch"},  # kopf scan
}
OPERATOR_OWN_NAMESPACE = {
    "configmaps[eniway-rbac-config]": {"get"},
    "leases.coordination.k8s.io": {"create"},
    f"leases.coordination.k8s.io[{LEASE}]": {"get", "update"},
}
AGENT_CLUSTER = {
    "nodes": {"get"},
    "pods": {"get", "list", "watch"},
    "events": {"create"},
    f"enis.{GROUP}": {"get", "list", "watch"},
    f"enipools.{GROUP}": {"get", "list", "watch"},
    f"enipools.{GROUP}/status": {"patch"},  # status.agent only, by contract
    f"podips.{GROUP}": {"get", "list", "watch", "create", "update", "delete"},
}
# Granted to every authenticated user by Kubernetes itself.
BUILTIN = {"selfsubjectaccessreviews.authorization.k8s.io",
           "selfsubjectrulesreviews.authorization.k8s.io"}
_ROW = re.compile(r"^(\S+)\s+\[\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


@pytest.fixture(scope="module")
def rbac(cluster: LocalCluster) -> Iterator[ChartRBAC]:
    installed = install_chart_rbac(cluster, namespace=NS, release="eniway-rbac", values={
        "cloud": {"credentials": {"existingSecret": SECRET}},
        "operator": {"leaderElection": {"enabled": True, "leaseName": LEASE}}})
    for name in (SECRET,):
        cluster.kubectl("-n", NS, "create", "secret", "generic", name,
                        "--from-literal=access-key-id=x", "--from-literal=access-key-secret=y")
    try:
        yield installed
    finally:
        installed.uninstall(cluster)
        cluster.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def _rights(cluster: LocalCluster, kubeconfig: Path, namespace: str) -> dict[str, set[str]]:
    """``kubectl auth can-i --list`` as {resource[name]: verbs}, built-in rights dropped."""
    out = cluster.kubectl("auth", "can-i", "--list", "-n", namespace,
                          kubeconfig=kubeconfig).stdout
    rights: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        m = _ROW.match(line)
        if not m or m.group(1) in BUILTIN:
            continue
        key = m.group(1) + (f"[{m.group(2)}]" if m.group(2) else "")
        rights.setdefault(key, set()).update(m.group(3).split())
    return rights


def test_operator_rights_are_exactly_what_it_needs(cluster: LocalCluster,
                                                   rbac: ChartRBAC) -> None:
    own = _rights(cluster, rbac.operator_kubeconfig, NS)
    assert own == {**OPERATOR_CLUSTER, **OPERATOR_OWN_NAMESPACE}
    elsewhere = _rights(cluster, rbac.operator_kubeconfig, "default")
    assert elsewhere == OPERATOR_CLUSTER


def test_agent_rights_are_exactly_what_it_needs(cluster: LocalCluster, rbac: ChartRBAC) -> None:
    assert _rights(cluster, rbac.agent_kubeconfig, NS) == AGENT_CLUSTER
    assert _rights(cluster, rbac.agent_kubeconfig, "default") == AGENT_CLUSTER


def _token(kubeconfig: Path) -> str:
    return str(json.loads(kubeconfig.read_text())["users"][0]["user"]["token"])


def _call(cluster: LocalCluster, kubeconfig: Path, method: str, path: str,
          body: Any = None, merge: bool = False) -> int:
    ctype = "application/merge-patch+json" if merge else "application/json"
    code, _ = cluster.request(method, path, body, token=_token(kubeconfig), content_type=ctype)
    return code


def _eni(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ENI", "metadata": {"name": name},
            "spec": {"nodeName": "rbac-node", "instanceId": "i-rbac0001", "deviceIndex": 1,
                     "vSwitchId": "vsw-rbac0001", "macAddress": "00:16:3e:00:00:01"}}


def _pool(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "ENIPool", "metadata": {"name": name},
            "spec": {"nodeName": name, "instanceId": "i-rbac0001"}}


def _podip(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "PodIP", "metadata": {"name": name},
            "spec": {"ip": "10.0.0.9", "eniId": "eni-rbac0001", "nodeName": "rbac-node",
                     "containerId": "c0ffee", "podUID": "00000000-0000-0000-0000-000000000001"}}


def test_operator_real_requests(cluster: LocalCluster, rbac: ChartRBAC) -> None:
    op = rbac.operator_kubeconfig
    api = f"/apis/{GROUP}/v1"
    # What it does: ENIs and pools, their status, its configuration, its leader Lease.
    assert _call(cluster, op, "POST", f"{api}/enis", _eni("eni-rbacop01")) == 201
    assert _call(cluster, op, "PATCH", f"{api}/enis/eni-rbacop01/status",
                 {"status": {"phase": "InUse"}}, merge=True) == 200
    assert _call(cluster, op, "POST", f"{api}/enipools", _pool("rbac-op-node")) == 201
    assert _call(cluster, op, "PATCH", f"{api}/enipools/rbac-op-node",
                 {"spec": {"release": {"ips": ["10.0.0.5"]}}}, merge=True) == 200
    assert _call(cluster, op, "GET", f"{api}/podips") == 200
    assert _call(cluster, op, "GET", f"/api/v1/namespaces/{NS}/configmaps/{rbac.configmap}") \
        == 200
    assert rbac.lease_name == LEASE
    leases = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": LEASE}, "spec": {"holderIdentity": "op-a"}}
    assert _call(cluster, op, "POST", leases, lease) == 201
    code, got = cluster.request("GET", f"{leases}/{LEASE}", token=_token(op))
    assert code == 200
    got["spec"]["holderIdentity"] = "op-b"
    assert _call(cluster, op, "PUT", f"{leases}/{LEASE}", got) == 200
    assert _call(cluster, op, "DELETE", f"{api}/enis/eni-rbacop01") == 200
    # What it must not do.
    refused: list[tuple[str, str, Any]] = [
        ("POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
            "spec": {"containers": [{"name": "x", "image": "x"}]}}),
        ("GET", f"/api/v1/namespaces/{NS}/secrets/{SECRET}", None),
        ("GET", f"/api/v1/namespaces/{NS}/secrets", None),
        ("GET", f"/api/v1/namespaces/{NS}/configmaps", None),
        ("GET", "/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt", None),
        ("GET", f"{leases}/someone-elses-lease", None),
        ("DELETE", f"{leases}/{LEASE}", None),
        ("PUT", f"/apis/{GROUP}/v1/enis/eni-rbacop01", _eni("eni-rbacop01")),
        ("PUT", f"/api/v1/namespaces/{NS}/configmaps/{rbac.configmap}", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": rbac.configmap}}),
        ("POST", f"{api}/namespaces/default/podips", _podip("x")),
        ("DELETE", "/api/v1/nodes/rbac-node", None),
        ("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {}),
    ]
    for method, path, body in refused:
        assert _call(cluster, op, method, path, body) == 403, (method, path)
    cluster.kubectl("delete", "enipool", "rbac-op-node", "--wait=false")


def test_agent_real_requests(cluster: LocalCluster, rbac: ChartRBAC) -> None:
    ag = rbac.agent_kubeconfig
    api = f"/apis/{GROUP}/v1"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [_eni("eni-rbacag01"),
                                                       _pool("rbac-ag-node")]}))
    try:
        # What it does: read its ENIs and pool, write status.agent, own PodIPs.
        assert _call(cluster, ag, "GET", f"{api}/enis/eni-rbacag01") == 200
        assert _call(cluster, ag, "PATCH", f"{api}/enipools/rbac-ag-node/status",
                     {"status": {"agent": {"ready": True, "acknowledged": ["10.0.0.5"]}}},
                     merge=True) == 200
        assert _call(cluster, ag, "POST", f"{api}/namespaces/default/podips",
                     _podip("rbac-pod")) == 201
        # A re-bind replaces the object (GET then PUT with its resourceVersion).
        podip_path = f"{api}/namespaces/default/podips/rbac-pod"
        code, podip = cluster.request("GET", podip_path, token=_token(ag))
        assert code == 200
        podip["spec"]["containerId"] = "abc"
        assert _call(cluster, ag, "PUT", podip_path, podip) == 200
        assert _call(cluster, ag, "DELETE", f"{api}/namespaces/default/podips/rbac-pod") == 200
        assert _call(cluster, ag, "GET", "/api/v1/namespaces/default/pods") == 200
        # What it must not do: write ENIs or pool specs, read Secrets or configuration,
        # touch pods or nodes.
        refused: list[tuple[str, str, Any]] = [
            ("POST", f"{api}/enis", _eni("eni-rbacag02")),
            ("DELETE", f"{api}/enis/eni-rbacag01", None),
            ("PATCH", f"{api}/enis/eni-rbacag01/status", {"status": {"phase": "Failed"}}),
            ("PATCH", f"{api}/enipools/rbac-ag-node", {"spec": {"release": {"ips": []}}}),
            ("DELETE", f"{api}/enipools/rbac-ag-node", None),
            ("GET", f"/api/v1/namespaces/{NS}/secrets/{SECRET}", None),
            ("GET", f"/api/v1/namespaces/{NS}/configmaps/{rbac.configmap}", None),
            ("DELETE", "/api/v1/namespaces/default/pods/x", None),
            ("GET", "/api/v1/nodes", None),
            ("PATCH", "/api/v1/nodes/rbac-ag-node", {"metadata": {"labels": {"a": "b"}}}),
        ]
        for method, path, body in refused:
            assert _call(cluster, ag, method, path, body, merge=method == "PATCH") == 403, \
                (method, path)
    finally:
        cluster.kubectl("delete", "eni/eni-rbacag01", "enipool/rbac-ag-node",
                        "--ignore-not-found", "--wait=false")


def test_helper_uninstall_removes_what_it_applied(cluster: LocalCluster) -> None:
    rbac = install_chart_rbac(cluster, namespace="eniway-rbac2", release="eniway-tmp")
    assert rbac.lease_name == "eniway-operator" and rbac.configmap == "eniway-tmp-config"
    names = {(d["kind"], d["metadata"]["name"]) for d in rbac.objects}
    assert ("ClusterRole", "eniway-tmp-operator") in names
    assert ("ConfigMap", "eniway-tmp-config") in names
    rbac.uninstall(cluster)
    for kind, name in names:
        ns = [] if kind.startswith("Cluster") else ["-n", "eniway-rbac2"]
        got = cluster.kubectl("get", kind.lower(), name, *ns, "--ignore-not-found", "-o", "name")
        assert got.stdout.strip() == "", (kind, name)
    cluster.kubectl("delete", "namespace", "eniway-rbac2", "--wait=false")
