"""The Helm chart, offline: lint, rendering with default and other values, schema, the
ConfigMap against the operator's own parser."""

from __future__ import annotations

import filecmp
import json
import subprocess
import tomllib
from typing import Any

import pytest
import yaml
from chart_rbac import CHART, REPO, helm, render

from eniway_operator import config as pool_config
from localcluster import BIN


def _by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    key = "initContainers" if init else "containers"
    return next(c for c in pod_spec[key] if c["name"] == name)


def _env(container: dict[str, Any],
         objs: dict[tuple[str, str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The container's environment; ConfigMap references resolved against the rendered
    ConfigMap when ``objs`` is given, Secret references left as they are."""
    out: dict[str, Any] = {}
    for e in container["env"]:
        ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
        if ref and objs is not None:
            out[e["name"]] = objs[("ConfigMap", ref["name"])]["data"][ref["key"]]
        else:
            out[e["name"]] = e.get("value", e.get("valueFrom"))
    return out


def test_versions_pinned_together() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["version"] == chart["appVersion"] == project == "0.1.0"


def test_chart_crds_identical_to_repo_crds() -> None:
    """The chart ships exactly the files of crds/ (same names, same bytes)."""
    cmp = filecmp.dircmp(REPO / "crds", CHART / "crds")
    assert cmp.left_only == [] and cmp.right_only == [], (cmp.left_only, cmp.right_only)
    match, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds",
                                               cmp.common_files, shallow=False)
    assert mismatch == [] and errors == [], f"{mismatch + errors}: cp crds/* charts/eniway/crds/"
    assert len(match) >= 3


@pytest.mark.parametrize("extra", [[], ["--set", "cloud.provider=cloudsim"],
                                   ["--set", "cloud.credentials.existingSecret=ak",
                                    "--set", "operator.leaderElection.enabled=false"]])
def test_helm_lint_clean(extra: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *extra, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def test_defaults_render_what_a_cluster_needs() -> None:
    docs = render()
    objs = _by_kind(docs)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Deployment",
                     "Job", "MutatingWebhookConfiguration", "Role", "RoleBinding", "Service",
                     "ServiceAccount"]
    assert all(d["metadata"].get("namespace") == "eniway-system" for d in docs
               if d["kind"] in ("ConfigMap", "DaemonSet", "Deployment", "Role", "RoleBinding",
                                "Service", "ServiceAccount"))
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = f"ghcr.io/eniway/eniway:{app_version}"

    dep = objs[("Deployment", "eniway-operator")]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "eniway-operator"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "Default"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    op = _container(pod, "operator")
    assert op["image"] == image
    assert op["securityContext"] == {"allowPrivilegeEscalation": False,
                                     "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}}
    ports = {p["name"]: p["containerPort"] for p in op["ports"]}
    assert op["livenessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/healthz",
                                              "port": "health"}
    assert op["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ports["health"] == 9441 and f"--health-port={ports['health']}" in op["args"]
    assert "--lease-name=eniway-operator" in op["args"]
    assert op["resources"]["requests"] and op["resources"]["limits"]["memory"]
    env = _env(op, objs)
    assert env["ENIWAY_CLOUD_PROVIDER"] == "aliyun" and env["ENIWAY_CLUSTER_ID"] == "eniway"
    assert "ENIWAY_CLOUD_ENDPOINT" not in env
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" not in env
    role = objs[("Role", "eniway-operator")]
    assert not any("secrets" in r["resources"] for r in role["rules"])

    ds = objs[("DaemonSet", "eniway-agent")]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "eniway-agent"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    agent = _container(pod, "agent")
    assert agent["image"] == image
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] == 0
    assert agent["readinessProbe"]["httpGet"] == {"host": "127.0.0.1", "path": "/readyz",
                                                  "port": "metrics"}
    assert "--metrics-addr=0.0.0.0:9901" in agent["args"]
    assert _env(agent)["ENIWAY_PROC_SYS"] == "/host/proc/sys"
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"/run/eniway", "/var/lib/eniway", "/var/run/netns", "/opt/cni/bin",
                          "/etc/cni/net.d", "/opt/eniway", "/proc/sys/net"}
    netns = next(m for m in agent["volumeMounts"] if m["name"] == "netns")
    assert netns["mountPropagation"] == "HostToContainer"
    init = _container(pod, "install-cni", init=True)
    assert init["image"] == image
    flat = " ".join(init["args"][0].replace("\\\n", " ").split())
    assert ("eniway install-cni --bin-dir /opt/cni/bin --conf-dir /etc/cni/net.d --lib-dir "
            "/opt/eniway --python /opt/eniway/python/bin/python3 --socket /run/eniway/eniway.sock"
            ) in flat
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert mounts == {"/opt/cni/bin", "/etc/cni/net.d", "/opt/eniway"}
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Service"] == [
        "eniway-webhook"], "cloudsim is off by default"


def test_admission_webhook_never_blocks_the_system_and_turns_off() -> None:
    objs = _by_kind(render())
    svc = objs[("Service", "eniway-webhook")]
    dep = objs[("Deployment", "eniway-operator")]
    op = _container(dep["spec"]["template"]["spec"], "operator")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook",
                                     "protocol": "TCP"}]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in op["ports"]
    assert {"--webhook-port=9443", "--webhook-names=eniway-webhook.eniway-system.svc",
            "--webhook-config=eniway-webhook"} <= set(op["args"])
    hook = objs[("MutatingWebhookConfiguration", "eniway-webhook")]["webhooks"][0]
    assert hook["clientConfig"] == {"service": {
        "name": "eniway-webhook", "namespace": "eniway-system", "path": "/mutate-pods",
        "port": 443}}, "no caBundle: each replica adds its own CA"
    assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["sideEffects"]) == (
        "Ignore", 5, "None")
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                              "operations": ["CREATE"], "resources": ["pods"],
                              "scope": "Namespaced"}]
    assert hook["namespaceSelector"]["matchExpressions"] == [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["kube-system", "eniway-system"]}]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert hook["objectSelector"]["matchExpressions"] == [{
        "key": "app.kubernetes.io/name", "operator": "NotIn",
        "values": [pod_labels["app.kubernetes.io/name"]]}], "eniway's own pods skip it"
    role = objs[("ClusterRole", "eniway-operator")]
    assert {"apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": ["eniway-webhook"], "verbs": ["get", "update"]} in role["rules"]

    off = render(values={"admissionWebhook": {"enabled": False}})
    assert not [d for d in off if d["kind"] in ("Service", "MutatingWebhookConfiguration")]
    off_objs = _by_kind(off)
    op = _container(off_objs[("Deployment", "eniway-operator")]["spec"]["template"]["spec"],
                    "operator")
    assert not [a for a in op["args"] if a.startswith("--webhook")]
    assert not [p for p in op["ports"] if p["name"] == "webhook"]
    rules = off_objs[("ClusterRole", "eniway-operator")]["rules"]
    assert not [r for r in rules if "mutatingwebhookconfigurations" in r["resources"]]
    assert next(r for r in rules if r["resources"] == ["namespaces"])["verbs"] == [
        "list", "watch"]


def test_other_values_render_cloudsim_credentials_and_paths() -> None:
    values = {
        "cloud": {"provider": "cloudsim", "region": "cn-beijing",
                  "credentials": {"existingSecret": "ecs-ak"}},
        "operator": {"replicas": 3, "hostNetwork": False,
                     "leaderElection": {"enabled": False, "leaseName": "x"}},
        "agent": {"mtu": 1400, "hostPID": True, "stateDir": "/var/lib/net",
                  "cniChain": [{"type": "bandwidth", "capabilities": {"bandwidth": True}}],
                  "updateStrategy": {"maxUnavailable": "20%"},
                  "installCNI": {"enabled": True, "binDir": "/home/kubernetes/bin",
                                 "confDir": "/etc/cni/net.d", "libDir": "/opt/eniway"}},
        "image": {"repository": "registry.example/eniway", "digest": "sha256:" + "a" * 64},
        "fullnameOverride": "net",
    }
    docs = render(release="r1", namespace="kube-system", values=values)
    objs = _by_kind(docs)
    role = objs[("Role", "net-operator")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                              "resourceNames": ["net-config"], "verbs": ["get"]}]

    dep = objs[("Deployment", "net-operator")]
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is False and pod["dnsPolicy"] == "ClusterFirst"
    op = _container(pod, "operator")
    assert op["image"] == "registry.example/eniway@sha256:" + "a" * 64
    assert "--standalone" in op["args"]
    assert "host" not in op["livenessProbe"]["httpGet"]
    env = _env(op, objs)
    # The Secret is mounted, not passed as env: a rotated key reaches the running operator.
    assert "ALIBABA_CLOUD_ACCESS_KEY_ID" not in env
    mount = next(m for m in op["volumeMounts"] if m["name"] == "cloud-credentials")
    assert env["ENIWAY_CLOUD_CREDENTIALS_DIR"] == mount["mountPath"] and mount["readOnly"]
    vol = next(v for v in pod["volumes"] if v["name"] == "cloud-credentials")["secret"]
    assert vol["secretName"] == "ecs-ak"
    assert vol["items"] == [{"key": "access-key-id", "path": "access-key-id"},
                            {"key": "access-key-secret", "path": "access-key-secret"}]
    assert env["ENIWAY_CLOUD_REGION"] == "cn-beijing"

    # The emulator: a Service whose link variables carry the endpoint into the operator.
    svc = objs[("Service", "net-cloudsim")]
    assert [p["name"] for p in svc["spec"]["ports"]] == ["api"]
    assert objs[("Deployment", "net-cloudsim")]["spec"]["template"]["spec"]["hostNetwork"]
    assert env["ENIWAY_CLOUD_ENDPOINT"] == \
        "http://$(NET_CLOUDSIM_SERVICE_HOST):$(NET_CLOUDSIM_SERVICE_PORT_API)"
    agent_pod = objs[("DaemonSet", "net-agent")]["spec"]["template"]["spec"]
    assert "--mtu=1400" in _container(agent_pod, "agent")["args"]

    ds = objs[("DaemonSet", "net-agent")]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "20%"
    assert _container(agent_pod, "agent")["securityContext"]["capabilities"]["add"] == [
        "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"]
    assert agent_pod["hostPID"] is True
    script = _container(agent_pod, "install-cni", init=True)["args"][0]
    assert "--bin-dir /home/kubernetes/bin" in script and "--mtu 1400" in script
    # the CNI binary's DEL reads the agent's store when the agent is down
    assert "--state-dir /var/lib/net" in script
    assert "--state-dir=/var/lib/net" in _container(agent_pod, "agent")["args"]
    assert """--chain '[{"capabilities":{"bandwidth":true},"type":"bandwidth"}]'""" in script
    assert {v["hostPath"]["path"] for v in agent_pod["volumes"] if "hostPath" in v} >= {
        "/home/kubernetes/bin"}


def test_configmap_is_accepted_by_the_operator() -> None:
    """The rendered config.yaml goes through the operator's real parser, defaults and not."""
    docs = render(show_only=("templates/configmap.yaml",))
    cfg = pool_config.merge((pool_config.from_configmap(docs[0]["data"], "cm"), "cm"))
    assert cfg == pool_config.PoolConfig()  # chart defaults == operator defaults
    values = {"pool": {"min_pool_size": 2, "max_pool_size": 12, "idle_ip_reclaim_after": "10m",
                       "vswitches": {"cn-hangzhou-i": ["vsw-aaaa1", "vsw-bbbb2"]},
                       "vswitch_selection_policy": "ordered",
                       "security_group_ids": ["sg-web01", "sg-db002"],
                       "eni_tags": {"team": "net"}, "ip_cooldown": 45}}
    docs = render(values=values, show_only=("templates/configmap.yaml",))
    cfg = pool_config.merge((pool_config.from_configmap(docs[0]["data"], "cm"), "cm"))
    assert (cfg.min_pool_size, cfg.max_pool_size, cfg.idle_ip_reclaim_after) == (2, 12, 600.0)
    assert cfg.vswitches_for("cn-hangzhou-i") == ("vsw-aaaa1", "vsw-bbbb2")
    assert cfg.vswitch_selection_policy == "ordered" and cfg.ip_cooldown == 45.0
    assert cfg.security_group_ids == ("sg-web01", "sg-db002") and cfg.eni_tags == {"team": "net"}
    data = docs[0]["data"]
    assert (data["cloud-provider"], data["cloud-region"], data["cluster-id"]) == (
        "aliyun", "cn-hangzhou", "eniway")


def test_every_pool_knob_in_values_is_known_to_the_operator() -> None:
    pool = yaml.safe_load((CHART / "values.yaml").read_text())["pool"]
    assert set(pool) == set(pool_config.PoolConfig.__dataclass_fields__)


@pytest.mark.parametrize(("flags", "message"), [
    (["--set", "pool.vswitch_selection_policy=random"], "vswitch_selection_policy"),
    (["--set", "pool.max_eni=65"], "max_eni"),
    (["--set", "pool.ips_per_call=51"], "ips_per_call"),
    (["--set", "pool.bogus=1"], "bogus"),
    (["--set", "pool.ip_cooldown=soon"], "ip_cooldown"),
    (["--set-json", 'pool.security_group_ids=["sg-1a2b","sg-2a2b","sg-3a2b","sg-4a2b",'
                    '"sg-5a2b","sg-6a2b"]'], "security_group_ids"),
    (["--set-json", 'pool.vswitches={"cn-hangzhou-i":["subnet-1"]}'], "vswitches"),
    (["--set-json", 'pool.eni_tags={"eniway.io/cluster":"x"}'], "eni_tags"),
    (["--set", "cloud.provider=gcp"], "cloud.provider"),
    (["--set", "cloud.endpoint=ftp://ecs.example.com"], "cloud.endpoint"),
    (["--set", "cloud.endpoint=ecs example"], "cloud.endpoint"),
    (["--set", "operator.replicas=0"], "operator.replicas"),
    (["--set", "agent.mtu=100"], "agent.mtu"),
    (["--set", "agent.metricsPort=70000"], "agent.metricsPort"),
    (["--set", "operator.leaderElection.leaseName=Bad_Name"], "leaseName"),
    (["--set", "agent.updateStrategy.maxUnavailable=0"], "maxUnavailable"),
    (["--set", "agent.installCNI.binDir=relative/bin"], "binDir"),
    (["--set", "image.digest=latest"], "image.digest"),
    (["--set", "admissionWebhook.failurePolicy=Maybe"], "failurePolicy"),
    (["--set", "admissionWebhook.timeoutSeconds=31"], "timeoutSeconds"),
])
def test_schema_rejects_bad_values(flags: list[str], message: str) -> None:
    out = subprocess.run([str(BIN / "helm"), "template", "x",
                          str(CHART), *flags], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, f"accepted {flags}"
    assert "schema" in out.stderr and message in out.stderr, out.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--set", "pool.min_pool_size=6", "--set", "pool.max_pool_size=2"],
     "pool.min_pool_size (6) must be <= pool.max_pool_size (2)"),
    (["--set", "pool.min_eni=3", "--set", "pool.max_eni=2"], "pool.min_eni (3) must be <="),
    (["--set", "cloud.provider=aws"], "cloud.region: set the EC2 region"),
    (["--set", "cloud.provider=aws", "--set", "cloud.region=us-east-1", "--set",
      "cloud.credentials.existingSecret=keys"], "boto3's credentials"),
])
def test_cross_key_rules_rejected_before_install(flags: list[str], message: str) -> None:
    """What JSON schema cannot say (one key against another) the templates refuse."""
    out = subprocess.run([str(BIN / "helm"), "template", "x",
                          str(CHART), *flags], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    ok = subprocess.run([str(BIN / "helm"), "template", "x", str(CHART), "--set",
                         "pool.min_pool_size=5", "--set", "pool.min_eni=2"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_cloudsim_elsewhere_and_its_builtin_key() -> None:
    """cloudsim.deploy=false: the operator talks to the endpoint given, nothing is deployed;
    without a Secret the emulator's built-in AccessKey pair is used."""
    docs = render(values={"cloud": {"provider": "cloudsim", "endpoint": "http://172.18.0.9:8765"},
                          "cloudsim": {"deploy": False}})
    assert not any("cloudsim" in d["metadata"]["name"] for d in docs)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = _env(dep["spec"]["template"]["spec"]["containers"][0], _by_kind(docs))
    assert env["ENIWAY_CLOUD_ENDPOINT"] == "http://172.18.0.9:8765"
    assert (env["ALIBABA_CLOUD_ACCESS_KEY_ID"], env["ALIBABA_CLOUD_ACCESS_KEY_SECRET"]) == (
        "eniway", "eniway-secret")


def _expand(args: list[str], env: dict[str, Any]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args from the container's env."""
    def one(arg: str) -> str:
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value if isinstance(value, str) else "x")
        assert "$(" not in arg, arg
        return arg
    return [one(a) for a in args]


@pytest.mark.parametrize("values", [
    {},
    {"cloud": {"provider": "cloudsim"}, "agent": {"mtu": 9000}, "pool": {"ip_cooldown": "250ms"},
     "operator": {"leaderElection": {"enabled": False, "leaseName": "x"}}},
    {"pool": {"ip_cooldown": 7}},
    {"pool": {"ip_cooldown": "2m"}},
    {"cloud": {"provider": "aws", "region": "us-west-2"},
     "serviceAccount": {"annotations": {
         "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/eniway"}}},
])
def test_rendered_commands_are_accepted_by_the_real_programs(
        values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every container's command line goes through its program's own argument parser, with
    the environment the chart gives it."""
    from cni_plugin.agent import main as agent_main
    from eniway_cloudsim import main as cloudsim_main
    from eniway_operator import main as operator_main

    objs = _by_kind(render(values=values))
    dep = objs[("Deployment", "eniway-operator")]["spec"]["template"]["spec"]
    op = _container(dep, "operator")
    env = {**_env(op, objs), "POD_NAME": "op-0", "POD_NAMESPACE": "eniway-system",
           "NODE_NAME": "n1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "from-secret")
    args = operator_main.parse_args(_expand(op["args"], env))
    assert args.namespace == "eniway-system" and args.configmap == "eniway-config"
    assert args.cluster_id == "eniway" and args.identity == "op-0"
    assert args.health_port == 9441 and args.metrics_port == 9442
    assert (args.webhook_port, args.webhook_config) == (9443, "eniway-webhook")
    assert args.cloud == values.get("cloud", {}).get("provider", "aliyun")
    assert args.standalone == ("operator" in values)
    if args.cloud == "cloudsim":
        assert args.access_key_id == "eniway"
    if args.cloud == "aws":
        assert args.region == "us-west-2" and not args.credentials_dir

    ds = objs[("DaemonSet", "eniway-agent")]["spec"]["template"]["spec"]
    agent = _container(ds, "agent")
    a = agent_main.parse_args(_expand(agent["args"], {**_env(agent), "NODE_NAME": "n1"}))
    assert (a.node_name, a.socket, a.state_dir) == ("n1", "/run/eniway/eniway.sock",
                                                    "/var/lib/eniway")
    # kubectl exec ... eniway-agent debug finds the socket the agent serves
    monkeypatch.setenv("ENIWAY_AGENT_SOCKET", str(_env(agent)["ENIWAY_AGENT_SOCKET"]))
    from cni_plugin.agent import debugcli
    assert debugcli.build_parser().parse_args([]).socket == a.socket
    assert a.metrics_addr == "0.0.0.0:9901" and a.mtu == values.get("agent", {}).get("mtu")
    cooldown = values.get("pool", {}).get("ip_cooldown", "30s")
    assert a.cooldown == pool_config.parse_duration(cooldown, "ip_cooldown")
    # the agent checks its ENIs against the cloud's own metadata service (none on cloudsim)
    provider = values.get("cloud", {}).get("provider", "aliyun")
    assert a.metadata_url == {"aliyun": "http://100.100.100.200",
                              "aws": "http://169.254.169.254"}.get(provider, "")
    if a.metadata_url:
        assert a.cloud == provider

    if ("Deployment", "eniway-cloudsim") in objs:
        sim = objs[("Deployment", "eniway-cloudsim")]["spec"]["template"]["spec"]
        c = _container(sim, "cloudsim")
        parsed = cloudsim_main.build_parser().parse_args(c["args"])
        assert parsed.listen == ("0.0.0.0", 9480) and parsed.state.startswith("/var/lib/cloudsim/")
        assert c["ports"][0]["containerPort"] == 9480


def test_pool_changes_apply_live_cloud_changes_restart() -> None:
    """The operator re-reads pool settings through the API: changing them must not roll its
    pods; cloud settings reach it as environment variables, so changing them must."""
    def template(values: dict[str, Any]) -> dict[str, Any]:
        docs = render(values=values, show_only=("templates/operator-deployment.yaml",))
        dep = next(d for d in docs if d["kind"] == "Deployment")
        return dict(dep["spec"]["template"])

    base = template({})
    assert template({"pool": {"max_pool_size": 20, "min_pool_size": 3}}) == base
    for changed in ({"cloud": {"region": "cn-beijing"}}, {"clusterId": "other"},
                    {"cloud": {"endpoint": "ecs-vpc.cn-hangzhou.aliyuncs.com"}},
                    {"cloud": {"credentials": {"existingSecret": "ak2"}}}):
        assert template(changed)["metadata"] != base["metadata"], changed


def test_operator_disruption_budget_where_policy_v1_exists() -> None:
    """On Kubernetes 1.21+ a node drain keeps one operator replica; a single replica gets no
    budget (it would block every drain)."""
    extra = ("--api-versions", "policy/v1/PodDisruptionBudget")
    objs = _by_kind(render(extra=extra))
    pdb = objs[("PodDisruptionBudget", "eniway-operator")]
    dep = objs[("Deployment", "eniway-operator")]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    single = render(values={"operator": {"replicas": 1}}, extra=extra)
    assert not [d for d in single if d["kind"] == "PodDisruptionBudget"]
    assert not [d for d in render() if d["kind"] == "PodDisruptionBudget"]  # 1.20: none


def test_api_server_address_for_every_eniway_pod() -> None:
    """apiServer.host/port: every eniway container (operator, agent, uninstall hook) reaches
    the API there instead of through the kubernetes Service's ClusterIP; unset: nothing."""
    def envs(values: dict[str, Any]) -> list[dict[str, Any]]:
        objs = _by_kind(render(values=values))
        pods = [objs[("Deployment", "eniway-operator")], objs[("DaemonSet", "eniway-agent")],
                objs[("Job", "eniway-uninstall")]]
        return [_env(c) for p in pods for c in p["spec"]["template"]["spec"]["containers"]]
    for env in envs({"apiServer": {"host": "127.0.0.1", "port": 6443}}):
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
            "127.0.0.1", "6443")
    assert not any("KUBERNETES_SERVICE_HOST" in env for env in envs({}))
    out = subprocess.run([str(BIN / "helm"), "template", "x", str(CHART), "--set",
                          "apiServer.host=10.0.0.1"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "apiServer.port is required" in out.stderr, out.stderr


@pytest.mark.parametrize(("value", "expect"), [
    ("", None), ("http://10.0.0.9:8080/instances/i-1/s3cret", "http://10.0.0.9:8080/"
                                                              "instances/i-1/s3cret")])
def test_agent_metadata_url_off_or_explicit(value: str, expect: str | None) -> None:
    objs = _by_kind(render(values={"agent": {"metadataURL": value}}))
    agent = _container(objs[("DaemonSet", "eniway-agent")]["spec"]["template"]["spec"], "agent")
    urls = [x.split("=", 1)[1] for x in agent["args"] if x.startswith("--metadata-url=")]
    assert urls == ([expect] if expect else [])


def test_cloudsim_admin_token_from_a_secret() -> None:
    """The emulator's admin API wants a token: the chart hands it one from a Secret, or
    none (the emulator then makes a random one and its admin API stays closed)."""
    from eniway_cloudsim.admin import ADMIN_TOKEN_ENV

    def sim_container(extra: dict[str, Any]) -> dict[str, Any]:
        docs = render(values={"cloud": {"provider": "cloudsim"}, "cloudsim": extra})
        dep = _by_kind(docs)[("Deployment", "eniway-cloudsim")]
        return _container(dep["spec"]["template"]["spec"], "cloudsim")

    c = sim_container({"adminTokenSecret": "sim-admin"})
    assert c["env"] == [{"name": ADMIN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
        "name": "sim-admin", "key": "admin-token"}}}]
    assert "env" not in sim_container({})
    assert c["readinessProbe"]["httpGet"]["path"] == "/admin/healthz"  # open to probes


@pytest.mark.parametrize("values", [
    {},
    {"uninstall": {"hook": {"force": True, "timeout": 60}},
     "operator": {"leaderElection": {"enabled": False}}, "cloud": {"provider": "cloudsim"}},
])
def test_uninstall_hook_runs_the_command_with_the_operators_settings(
        values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The pre-delete hook: every object a hook (the Job last), and its command line
    accepted by the real parser with the environment the chart gives it."""
    from eniway_operator import uninstall

    docs = [d for d in render(values=values)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "uninstall"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Job", "Role", "RoleBinding",
                     "ServiceAccount"]
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in docs}
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete" for d in docs)
    assert weights["Job"] > max(w for k, w in weights.items() if k != "Job")
    objs = _by_kind(render(values=values))
    job = objs[("Job", "eniway-uninstall")]
    pod = job["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "eniway-uninstall"
    c = _container(pod, "uninstall")
    env = {**_env(c, objs), "POD_NAME": "u-0", "POD_NAMESPACE": "eniway-system"}
    for name, value in env.items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "from-secret")
    assert c["command"] == ["eniway-operator", "uninstall"]
    args = uninstall.parse_args(_expand(c["args"], env))
    assert args.scale_down == "eniway-operator" and args.namespace == "eniway-system"
    assert args.cluster_id == "eniway"
    hook = values.get("uninstall", {}).get("hook", {})
    assert args.force == hook.get("force", False) and args.timeout == hook.get("timeout", 300)
    assert args.lease_name == ("" if "operator" in values else "eniway-operator")
    role = objs[("Role", "eniway-uninstall")]
    apps = [r["resources"] for r in role["rules"] if r["apiGroups"] == ["apps"]]
    assert apps == [["deployments/scale"]]
    off = render(values={"uninstall": {"hook": {"enabled": False}}})
    assert not [d for d in off if "uninstall" in d["metadata"]["name"]]


def test_sts_token_key_of_the_credentials_secret_is_mounted() -> None:
    objs = _by_kind(render(values={"cloud": {"credentials": {
        "existingSecret": "ecs-sts", "securityTokenKey": "token"}}}))
    pod = objs[("Deployment", "eniway-operator")]["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "cloud-credentials")["secret"]
    assert {"key": "token", "path": "security-token"} in vol["items"]


def test_prometheus_scrape_annotations_and_optional_podmonitor() -> None:
    objs = _by_kind(render())
    for kind, name, port in (("Deployment", "eniway-operator", "9442"),
                             ("DaemonSet", "eniway-agent", "9901")):
        ann = objs[(kind, name)]["spec"]["template"]["metadata"]["annotations"]
        assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"],
                ann["prometheus.io/path"]) == ("true", port, "/metrics")
        pod = objs[(kind, name)]["spec"]["template"]["spec"]
        ports = {p["name"]: str(p["containerPort"]) for c in pod["containers"]
                 for p in c.get("ports", [])}
        assert ports["metrics"] == port  # what the PodMonitor names
    assert not [d for d in render() if d["kind"] == "PodMonitor"]
    off = _by_kind(render(values={"prometheus": {"scrapeAnnotations": False}}))
    assert "annotations" not in off[("DaemonSet", "eniway-agent")]["spec"]["template"]["metadata"]
    mons = _by_kind(render(values={"prometheus": {"podMonitor": {
        "enabled": True, "labels": {"release": "kube-prometheus"}}}}))
    for component in ("operator", "agent"):
        mon = mons[("PodMonitor", f"eniway-{component}")]
        assert mon["metadata"]["labels"]["release"] == "kube-prometheus"
        assert mon["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        assert mon["spec"]["podMetricsEndpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "30s"}]


def test_alert_rules_and_dashboard_only_when_enabled() -> None:
    """The PrometheusRule carries files/prometheus-rules.yaml as it is, the ConfigMap the
    dashboard JSON; neither is rendered unless asked for."""
    files = CHART / "files"
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render()}
    assert not [k for k in kinds if k[0] == "PrometheusRule" or k[1] == "eniway-dashboard"]
    objs = _by_kind(render(values={"prometheus": {
        "rules": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "dashboard": {"enabled": True}}}))
    rule = objs[("PrometheusRule", "eniway")]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    assert rule["spec"] == yaml.safe_load((files / "prometheus-rules.yaml").read_text())
    assert "{{ $labels.node }}" in json.dumps(rule["spec"])  # Prometheus', not Helm's
    dash = objs[("ConfigMap", "eniway-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["eniway.json"]) == json.loads(
        (files / "grafana-dashboard.json").read_text())
    only_rules = {k for k in _by_kind(render(values={"prometheus": {"rules": {
        "enabled": True}}}))}
    assert ("PrometheusRule", "eniway") in only_rules
    assert ("ConfigMap", "eniway-dashboard") not in only_rules
