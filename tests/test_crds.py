"""The four CRDs against the real kube-apiserver."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from localcluster import LocalCluster

pytestmark = pytest.mark.cluster

ENI_NAME = "eni-0a1b2c3d4e5f"


def _eni(name: str = ENI_NAME, **spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "nodeName": "node-a", "instanceId": "i-abc123def", "vSwitchId": "vsw-zone1a",
        "deviceIndex": 1, "macAddress": "00:16:3e:01:02:03", "primaryIP": "10.0.1.10",
        "gatewayIP": "10.0.1.253", "securityGroupIds": ["sg-default1"],
    }
    base.update(spec)
    return {"apiVersion": "network.eniway.io/v1", "kind": "ENI", "metadata": {"name": name},
            "spec": base}


def _apply(cluster: LocalCluster, obj: dict[str, object],
           check: bool = True) -> subprocess.CompletedProcess[str]:
    # --validate=false: the apiserver's schema, not kubectl, must be what rejects bad input
    return cluster.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(obj),
                           check=check)


def test_crds_established_with_short_names(cluster: LocalCluster) -> None:
    out = cluster.kubectl("api-resources", "--api-group=network.eniway.io", "-o", "wide").stdout
    for kind, short in (("ENI", "eni"), ("PodIP", "pip"), ("ENIPool", "ep"),
                        ("ExclusiveENIPolicy", "xep")):
        line = next(x for x in out.splitlines() if f" {kind} " in f" {x} ")
        assert short in line.split(), line


def test_eni_columns(cluster: LocalCluster) -> None:
    _apply(cluster, _eni(primary=False))
    status = {"status": {"phase": "InUse", "ipCount": 5, "freeCount": 3, "ips": [
        {"ip": "10.0.1.11", "state": "free"}]}}
    code, body = cluster.request(
        "PATCH", f"/apis/network.eniway.io/v1/enis/{ENI_NAME}/status", status,
        content_type="application/merge-patch+json")
    assert code == 200, body
    out = cluster.kubectl("get", "enis").stdout.splitlines()
    assert out[0].split() == ["NAME", "NODE", "PRIMARY", "MODE", "PHASE", "IPS", "FREE",
                              "VSWITCH", "POD", "AGE"]
    row = next(r for r in out if r.startswith(ENI_NAME)).split()
    assert row[1:8] == ["node-a", "false", "Shared", "InUse", "5", "3", "vsw-zone1a"]
    wide = cluster.kubectl("get", "eni", ENI_NAME, "-o", "wide").stdout
    assert "00:16:3e:01:02:03" in wide and "10.0.1.10" in wide


def test_exclusive_eni_names_its_pod(cluster: LocalCluster) -> None:
    name = "eni-exclusive01"
    _apply(cluster, _eni(name, primary=False, mode="Exclusive", claim="shop/db-0",
                         podNamespace="shop", podName="db-0"))
    row = next(r for r in cluster.kubectl("get", "enis").stdout.splitlines()
               if r.startswith(name)).split()
    assert (row[3], row[-2]) == ("Exclusive", "db-0")  # no status yet: blank columns
    wide = cluster.kubectl("get", "eni", name, "-o", "wide").stdout.splitlines()
    assert "POD-NAMESPACE" in wide[0].split() and "shop" in wide[1].split()


def test_podip_columns_all_namespaces(cluster: LocalCluster) -> None:
    obj = {"apiVersion": "network.eniway.io/v1", "kind": "PodIP",
           "metadata": {"name": "web-1", "namespace": "default"},
           "spec": {"ip": "10.0.1.11", "eniId": ENI_NAME, "nodeName": "node-a",
                    "containerId": "c0ffee", "interface": "eth0",
                    "podUID": str(uuid.uuid4()), "allocatedAt": "2026-01-01T00:00:00Z"}}
    _apply(cluster, obj)
    out = cluster.kubectl("get", "podips", "-A").stdout.splitlines()
    assert out[0].split() == ["NAMESPACE", "NAME", "IP", "ENI", "NODE", "MODE", "PUBLIC-IP",
                              "AGE"]
    row = next(r for r in out if " web-1 " in r).split()
    assert row[:6] == ["default", "web-1", "10.0.1.11", ENI_NAME, "node-a", "Shared"]
    obj["metadata"] = {"name": "db-0", "namespace": "default"}
    obj["spec"]["mode"] = "Exclusive"  # type: ignore[index]
    _apply(cluster, obj)
    row = next(r for r in cluster.kubectl("get", "podips", "-A").stdout.splitlines()
               if " db-0 " in r).split()
    assert row[5] == "Exclusive"
    obj["spec"]["mode"] = "Dedicated"  # type: ignore[index]
    bad = _apply(cluster, obj, check=False)
    assert bad.returncode != 0 and "spec.mode" in bad.stderr, bad.stderr


def _policy(name: str, **spec: object) -> dict[str, object]:
    base: dict[str, object] = {"selector": {"podSelector": {"matchLabels": {"app": "db"}}},
                               "securityGroupIDs": ["sg-db000001"]}
    base.update(spec)
    return {"apiVersion": "network.eniway.io/v1", "kind": "ExclusiveENIPolicy",
            "metadata": {"name": name}, "spec": base}


def test_exclusive_policy_columns_and_defaults(cluster: LocalCluster) -> None:
    _apply(cluster, _policy("db-fixed", ipType="Fixed", releaseAfter="10m",
                            vSwitchIDs=["vsw-zone1a"],
                            securityGroupIDs=["sg-db000001", "sg-db000002"]))
    _apply(cluster, _policy("db-elastic"))
    out = cluster.kubectl("get", "exclusiveenipolicies").stdout.splitlines()
    assert out[0].split() == ["NAME", "IP-TYPE", "RELEASE-AFTER", "SECURITY-GROUPS",
                              "VSWITCHES", "AGE"]
    row = next(r for r in out if r.startswith("db-fixed")).split()
    assert row[1:3] == ["Fixed", "10m"] and "sg-db000002" in row[3]
    row = next(r for r in out if r.startswith("db-elastic")).split()
    assert row[1] == "Elastic", "ipType defaults to Elastic"
    # cluster-scoped and selecting app=db everywhere: gone before other modules run
    cluster.kubectl("delete", "exclusiveenipolicy", "db-fixed", "db-elastic")


@pytest.mark.parametrize(("name", "spec", "message"), [
    ("six-groups", {"securityGroupIDs": [f"sg-g{i}000000" for i in range(6)]},
     "should have at most 5 items"),
    ("no-groups", {"securityGroupIDs": []}, "spec.securityGroupIDs"),
    ("bad-type", {"ipType": "Sticky"}, "spec.ipType"),
    ("bad-release", {"ipType": "Fixed", "releaseAfter": "ten minutes"}, "spec.releaseAfter"),
    ("bad-group", {"securityGroupIDs": ["web"]}, "should match"),
    ("no-selector", {"selector": {}}, "spec.selector"),
])
def test_invalid_exclusive_policy_rejected(cluster: LocalCluster, name: str,
                                           spec: dict[str, object], message: str) -> None:
    res = _apply(cluster, _policy(name, **spec), check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert cluster.kubectl("get", "exclusiveenipolicy", name, check=False).returncode != 0


def test_enipool_columns(cluster: LocalCluster) -> None:
    obj = {"apiVersion": "network.eniway.io/v1", "kind": "ENIPool",
           "metadata": {"name": "node-a"},
           "spec": {"nodeName": "node-a", "instanceId": "i-abc123def",
                    "instanceType": "ecs.g6.large", "zoneId": "cn-hangzhou-i"}}
    _apply(cluster, obj)
    status = {"status": {"limits": {"enis": 2, "ipsPerENI": 6, "maxPods": 5},
                         "counts": {"enis": 1, "total": 5, "free": 2, "allocated": 3},
                         "conditions": [{"type": "LimitReached", "status": "True"},
                                        {"type": "Ready", "status": "True"}]}}
    code, body = cluster.request("PATCH", "/apis/network.eniway.io/v1/enipools/node-a/status",
                                 status, content_type="application/merge-patch+json")
    assert code == 200, body
    out = cluster.kubectl("get", "enipools").stdout.splitlines()
    # SECONDARY-ENIS: what `kubectl get enis` lists for the node less its PRIMARY one.
    assert out[0].split() == ["NAME", "READY", "TYPE", "SECONDARY-ENIS", "IPS", "FREE",
                              "MAXPODS", "AGE"]
    row = next(r for r in out if r.startswith("node-a")).split()
    assert row[1:7] == ["True", "ecs.g6.large", "1", "5", "2", "5"]


@pytest.mark.parametrize(("name", "spec", "message"), [
    ("eni-badip0001", {"primaryIP": "10.0.1.300"}, "spec.primaryIP"),
    ("eni-badmac0001", {"macAddress": "00:16:3e:zz:02:03"}, "spec.macAddress"),
    ("eni-toomanysg1", {"securityGroupIds": [f"sg-g{i}0000" for i in range(6)]},
     "spec.securityGroupIds"),
    ("not-an-eni-id", {}, "metadata.name"),
])
def test_invalid_eni_rejected(cluster: LocalCluster, name: str, spec: dict[str, object],
                              message: str) -> None:
    res = _apply(cluster, _eni(name, **spec), check=False)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr
    assert cluster.kubectl("get", "eni", name, check=False).returncode != 0


def test_missing_required_field_rejected(cluster: LocalCluster) -> None:
    obj = _eni("eni-noinstance1")
    del obj["spec"]["instanceId"]  # type: ignore[attr-defined]
    res = _apply(cluster, obj, check=False)
    assert res.returncode != 0
    assert "spec.instanceId: Required value" in res.stderr, res.stderr


def test_podip_bad_ip_rejected(cluster: LocalCluster) -> None:
    obj = {"apiVersion": "network.eniway.io/v1", "kind": "PodIP",
           "metadata": {"name": "bad", "namespace": "default"},
           "spec": {"ip": "not-an-ip", "eniId": ENI_NAME, "nodeName": "n", "containerId": "c"}}
    res = _apply(cluster, obj, check=False)
    assert res.returncode != 0 and "spec.ip" in res.stderr, res.stderr


def test_status_ignored_on_main_endpoint(cluster: LocalCluster) -> None:
    name = "eni-statusonly1"
    _apply(cluster, _eni(name))
    code, _ = cluster.request("PATCH", f"/apis/network.eniway.io/v1/enis/{name}",
                              {"status": {"phase": "Failed"}, "spec": {"deviceIndex": 2}},
                              content_type="application/merge-patch+json")
    assert code == 200
    code, obj = cluster.request("GET", f"/apis/network.eniway.io/v1/enis/{name}")
    assert obj["spec"]["deviceIndex"] == 2  # type: ignore[index]
    assert "phase" not in (obj.get("status") or {})  # type: ignore[operator]


def test_serviceaccount_kubeconfig_has_only_granted_rights(cluster: LocalCluster) -> None:
    kc = cluster.serviceaccount_kubeconfig("eniway-test", "nobody")
    denied = cluster.kubectl("get", "enis", kubeconfig=kc, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "eni-reader"},
            "rules": [{"apiGroups": ["network.eniway.io"], "resources": ["enis"],
                       "verbs": ["get", "list"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "eni-reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": "eni-reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "nobody",
                             "namespace": "eniway-test"}]}
    _apply(cluster, role)
    _apply(cluster, binding)
    assert cluster.kubectl("get", "enis", kubeconfig=kc).returncode == 0
    assert cluster.kubectl("delete", "eni", ENI_NAME, kubeconfig=kc, check=False).returncode != 0


@pytest.mark.parametrize("config,needle", [
    ({"min_pool_size": -1}, "spec.config.min_pool_size"),
    ({"max_pool_size": "ten"}, "spec.config.max_pool_size"),
    ({"ips_per_call": 51}, "spec.config.ips_per_call"),
    ({"vswitches": {"cn-hangzhou-i": ["vsw_typo"]}}, "spec.config.vswitches"),
    ({"vswitches": {"cn-hangzhou-i": []}}, "spec.config.vswitches"),
    ({"security_group_ids": ["default"]}, "spec.config.security_group_ids"),
    ({"vswitch_selection_policy": "random"}, "spec.config.vswitch_selection_policy"),
    ({"ip_cooldown": "soon"}, "spec.config.ip_cooldown"),
    ({"delete_on_release": "yes"}, "spec.config.delete_on_release"),
])
def test_enipool_config_rejects_what_it_can(cluster: LocalCluster, config: dict[str, object],
                                            needle: str) -> None:
    """ENIPool spec.config has a structural schema: the API server refuses bad types,
    ranges and ids before any node sees them; unknown keys stay (the operator names them)."""
    name = f"cfg-{uuid.uuid4().hex[:6]}"
    pool = {"apiVersion": "network.eniway.io/v1", "kind": "ENIPool", "metadata": {"name": name},
            "spec": {"nodeName": name, "config": config}}
    out = _apply(cluster, pool, check=False)
    assert out.returncode != 0 and needle in out.stderr, out.stdout + out.stderr
    good = {"min_pool_size": 2, "max_pool_size": 8, "ip_cooldown": "30s",
            "idle_ip_reclaim_after": 300, "vswitches": {"cn-hangzhou-i": ["vsw-abcd1234"]},
            "security_group_ids": ["sg-abcd1234"], "eni_tags": {"team": "a"},
            "min_pol_size": 1}
    pool["spec"] = {"nodeName": name, "config": good}
    _apply(cluster, pool)
    got = json.loads(cluster.kubectl("get", "enipool", name, "-o", "json").stdout)
    assert got["spec"]["config"] == good  # nothing pruned, the typo kept for the operator
    cluster.kubectl("delete", "enipool", name)
