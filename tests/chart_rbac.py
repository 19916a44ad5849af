"""Install the RBAC part of the Helm chart into a cluster and hand back ServiceAccount
kubeconfigs, so the operator and the agent can run as processes with exactly the rights the
chart grants them.

    rbac = install_chart_rbac(cluster)   # namespace eniway-system, release eniway
    # eniway-operator --kubeconfig {rbac.operator_kubeconfig} --namespace {rbac.namespace}
    #     --configmap {rbac.configmap} --lease-name {rbac.lease_name} --cluster-id ...
    # eniway-agent --kubeconfig {rbac.agent_kubeconfig} --node-name ...
    rbac.uninstall(cluster)

What is applied is what ``helm template`` renders from charts/eniway (ServiceAccounts,
ClusterRoles, Roles and their bindings, and by default the pool ConfigMap), with the same
values a real install would use. The operator may read only that ConfigMap (by name:
``<release>-config``, so ``eniway-config`` for release ``eniway``) and hold only that Lease
(``eniway-operator`` by default) in ``namespace``. To bring a ConfigMap of your own under
that name, pass ``with_config=False``.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster import BIN, LocalCluster

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "eniway"
RBAC_TEMPLATES = ("templates/serviceaccounts.yaml", "templates/rbac-operator.yaml",
                  "templates/rbac-agent.yaml")
CONFIG_TEMPLATE = "templates/configmap.yaml"


def helm(*args: str, kubeconfig: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "helm"), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)


def _value_args(values: dict[str, Any] | None) -> list[str]:
    return ["--values", "-"] if values else []


def render(release: str = "eniway", namespace: str = "eniway-system",
           values: dict[str, Any] | None = None, show_only: tuple[str, ...] = (),
           extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """``helm template`` of the chart; the documents, parsed."""
    cmd = [str(BIN / "helm"), "template", release, str(CHART), "--namespace", namespace,
           *_value_args(values), *extra]
    for name in show_only:
        cmd += ["--show-only", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120,
                         input=json.dumps(values) if values else None)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@dataclass
class ChartRBAC:
    release: str
    namespace: str
    operator_serviceaccount: str
    agent_serviceaccount: str
    operator_kubeconfig: Path
    agent_kubeconfig: Path
    configmap: str  # the pool ConfigMap the operator may read (installed with with_config)
    lease_name: str | None  # the leader Lease the operator may hold (None: --standalone)
    objects: list[dict[str, Any]]

    def uninstall(self, cluster: LocalCluster) -> None:
        """Delete everything install_chart_rbac applied (the namespace stays)."""
        if self.objects:
            cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                            input=json.dumps({"apiVersion": "v1", "kind": "List",
                                              "items": self.objects}))


def install_chart_rbac(cluster: LocalCluster, namespace: str = "eniway-system",
                       release: str = "eniway", values: dict[str, Any] | None = None,
                       with_config: bool = True) -> ChartRBAC:
    """Apply the chart's ServiceAccounts and RBAC (plus, by default, its pool ConfigMap)
    and return kubeconfigs for both accounts."""
    templates = RBAC_TEMPLATES + ((CONFIG_TEMPLATE,) if with_config else ())
    docs = render(release, namespace, values, templates)
    election = _merged_values(values)["operator"]["leaderElection"]
    lease_name = str(election["leaseName"]) if election["enabled"] else None
    code, body = cluster.request("POST", "/api/v1/namespaces", {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    if code not in (201, 409):
        raise RuntimeError(f"namespace {namespace}: {code} {body}")
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    sas = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["metadata"]["name"]
           for d in docs if d["kind"] == "ServiceAccount"}
    role = next(d for d in docs if d["kind"] == "Role")
    configmap = next(r["resourceNames"][0] for r in role["rules"]
                     if r["resources"] == ["configmaps"])
    return ChartRBAC(
        release=release, namespace=namespace,
        operator_serviceaccount=sas["operator"], agent_serviceaccount=sas["agent"],
        operator_kubeconfig=cluster.serviceaccount_kubeconfig(namespace, sas["operator"]),
        agent_kubeconfig=cluster.serviceaccount_kubeconfig(namespace, sas["agent"]),
        configmap=configmap, lease_name=lease_name, objects=docs,
    )


def _merged_values(values: dict[str, Any] | None) -> dict[str, Any]:
    """The chart's values.yaml overlaid with ``values`` (as Helm merges maps)."""
    base: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for k, v in b.items():
            a[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    return merge(base, values or {})
