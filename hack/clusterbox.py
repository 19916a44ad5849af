"""The cluster in a box: the whole of eniway on one machine, for the demo and the e2e tests.

- a real control plane (``LocalCluster``: etcd, kube-apiserver, controller-manager,
  scheduler);
- ``eniway-cloudsim`` in network mode: a VPC namespace with vSwitch gateways; every
  instance is a network namespace (the node's host network) whose ENIs are veths into
  the VPC, with source/destination check;
- per node: the CNI binary and conflist installed by ``eniway install-cni``, an
  ``eniway-agent`` managing the node's namespace, and a kubelet stand-in that
  registers the Node and runs the conflist for each pod bound to it;
- the operator, ``eniway-operator``, talking to the emulator through the official SDK.

Every process is a child in its own process group that dies with its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cniexec import CNIRuntime
from eniway_cloudsim.testing import SimHandle, start_subprocess
from eniway_operator import testing
from kubelet_standin import KubeletStandin, netns_name
from localcluster import LocalCluster, _die_with_parent, free_port

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-i"
NAMESPACE = "eniway-system"
CONFIGMAP = "eniway-config"


@dataclass
class NodeSpec:
    name: str
    instance_type: str


@dataclass
class Node:
    spec: NodeSpec
    instance_id: str
    netns: str
    primary_ip: str
    dir: Path
    agent: subprocess.Popen[bytes] | None = None
    kubelet: KubeletStandin | None = None
    metrics_port: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ClusterBox:
    nodes: list[NodeSpec]
    pool_config: dict[str, Any] = field(default_factory=dict)
    vswitch_cidrs: tuple[str, ...] = ("10.0.1.0/24", "10.0.2.0/24")
    cluster_id: str = field(default_factory=lambda: f"box{uuid.uuid4().hex[:6]}")
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="eniway-box-")))
    attach_delay: float = 0.3
    agent_args: tuple[str, ...] = ("--gc-interval", "5", "--gc-grace", "10",
                                   "--heartbeat-interval", "5", "--cooldown", "0")
    log: Callable[[str], None] = lambda msg: None
    cluster: LocalCluster | None = None
    cloud: SimHandle | None = None
    operator: subprocess.Popen[bytes] | None = None
    node_by_name: dict[str, Node] = field(default_factory=dict)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> ClusterBox:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        self.log("starting the control plane (etcd, kube-apiserver, controller-manager, "
                 "scheduler)")
        self.cluster = LocalCluster().start()
        self.log(f"  apiserver ready in {self.cluster.timings['apiserver_ready_s']:.1f}s "
                 f"at {self.cluster.server}")
        self.log("starting eniway-cloudsim with its VPC network")
        self.cloud = testing.with_provider(start_subprocess([
            "--network", "--teardown-on-exit", "--netns-prefix", f"{self.cluster_id}-",
            "--state", str(self.workdir / "cloud.db"),
            "--attach-delay", str(self.attach_delay), "--detach-delay", str(self.attach_delay),
        ], region=REGION))
        topo = self.cloud.admin.bootstrap({ZONE: list(self.vswitch_cidrs)})
        self.topology = topo
        self.log(f"  {self.cloud.url}: {topo.vpc_id}, vSwitches "
                 f"{', '.join(topo.vswitch_ids(ZONE))}, {topo.security_group_id}")
        self._write_config(topo.vswitch_ids(ZONE), topo.security_group_id)
        for i, spec in enumerate(self.nodes):
            self._start_node(spec, topo.vswitch_ids(ZONE)[i % len(topo.vswitch_ids(ZONE))],
                             topo.security_group_id)
        self.start_operator()
        self.log(f"system up in {time.monotonic() - t0:.1f}s")

    def stop(self) -> None:
        """Stop everything in reverse order; pods' networks are torn down by their DEL."""
        for node in self.node_by_name.values():
            if node.kubelet is not None:
                with contextlib.suppress(Exception):
                    node.kubelet.stop(teardown=True)
        self.stop_operator()
        for node in self.node_by_name.values():
            self.stop_agent(node.name)
        if self.cloud is not None:
            self.cloud.close()
        for node in self.node_by_name.values():
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ClusterBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces --------------------------------------------------------------------------

    @property
    def kube(self) -> LocalCluster:
        assert self.cluster is not None
        return self.cluster

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self._env(),
                                preexec_fn=_die_with_parent)

    def _write_config(self, vswitches: list[str], sg: str) -> None:
        cfg = {"vswitches": {ZONE: vswitches}, "security_group_ids": [sg],
               "max_pool_size": 5, "min_pool_size": 2, **self.pool_config}
        self.kube.kubectl("create", "namespace", NAMESPACE, check=False)
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
              "data": {"config.json": json.dumps(cfg, indent=2)}}
        self.kube.kubectl("apply", "-f", "-", input=json.dumps(cm))

    def set_pool_config(self, **changes: Any) -> None:
        cm = json.loads(self.kube.kubectl("get", "configmap", CONFIGMAP, "-n", NAMESPACE,
                                          "-o", "json").stdout)
        cfg = json.loads(cm["data"]["config.json"])
        cfg.update(changes)
        cm["data"]["config.json"] = json.dumps(cfg, indent=2)
        self.kube.kubectl("apply", "-f", "-", input=json.dumps(cm))

    def start_operator(self) -> None:
        assert self.cloud is not None
        secret = self.workdir / "cloud-secret"
        secret.write_text(self.cloud.access_key_secret)
        self.operator_metrics = free_port()
        self.operator = self._spawn("operator", [
            sys.executable, "-m", "eniway_operator.main", "--kubeconfig",
            str(self.kube.kubeconfig), "--namespace", NAMESPACE, "--configmap", CONFIGMAP,
            "--cluster-id", self.cluster_id, "--cloud", "cloudsim",
            "--cloud-endpoint", self.cloud.endpoint, "--region", REGION,
            "--access-key-id", self.cloud.access_key_id,
            "--access-key-secret-file", str(secret),
            "--metrics-port", str(self.operator_metrics), "--gc-interval", "10",
            "--gc-grace", "20",
        ])

    def stop_operator(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.operator, sig)
        self.operator = None

    def _start_node(self, spec: NodeSpec, vswitch: str, sg: str) -> None:
        assert self.cloud is not None
        netns = f"{self.cluster_id}-{spec.name}"
        inst = self.cloud.admin.create_instance(spec.instance_type, vswitch, [sg],
                                                name=spec.name, netns=netns)
        primary_ip = next(e["primary_ip"] for e in inst["enis"] if e["type"] == "Primary") \
            if "enis" in inst else inst.get("primary_ip", "")
        ndir = self.workdir / spec.name
        node = Node(spec, inst["instance_id"], netns, primary_ip, ndir)
        self.node_by_name[spec.name] = node
        subprocess.run(["eniway", "install-cni", "--bin-dir", str(ndir / "bin"),
                        "--conf-dir", str(ndir / "net.d"), "--lib-dir", str(ndir / "opt"),
                        "--socket", str(ndir / "run" / "eniway.sock"),
                        "--state-dir", str(ndir / "state")],
                       check=True, capture_output=True)
        self.start_agent(spec.name)
        runtime = CNIRuntime(ndir / "net.d" / "10-eniway.conflist",
                             [ndir / "bin", Path("/usr/lib/cni")], ndir / "cni-cache",
                             node_netns=netns)
        labels = {"node.kubernetes.io/instance-type": spec.instance_type,
                  "topology.kubernetes.io/zone": ZONE, "topology.kubernetes.io/region": REGION}
        node.kubelet = KubeletStandin(str(self.kube.kubeconfig), spec.name, runtime,
                                      provider_id=inst["provider_id"], node_ip=primary_ip,
                                      labels=labels, on_event=self.log,
                                      heartbeat_s=3.0).start()
        self.log(f"  node {spec.name}: {spec.instance_type}, {inst['instance_id']}, "
                 f"netns {netns}, {primary_ip}")

    def start_agent(self, name: str) -> None:
        node = self.node_by_name[name]
        node.metrics_port = node.metrics_port or free_port()
        node.agent = self._spawn(f"agent-{name}", [
            sys.executable, "-m", "cni_plugin.agent.main", "--node-name", name,
            "--kubeconfig", str(self.kube.kubeconfig),
            "--socket", str(node.dir / "run" / "eniway.sock"),
            "--state-dir", str(node.dir / "state"), "--netns", node.netns,
            "--metrics-addr", f"127.0.0.1:{node.metrics_port}", *self.agent_args,
        ])

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> None:
        node = self.node_by_name[name]
        _stop(node.agent, sig)
        node.agent = None

    # -- queries -------------------------------------------------------------------------

    def get(self, *args: str) -> Any:
        return json.loads(self.kube.kubectl("get", *args, "-o", "json").stdout)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-l", selector)["items"]
        return items

    def running_pods(self, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(selector)
                if p["status"].get("phase") == "Running" and p["status"].get("podIP")
                and not p["metadata"].get("deletionTimestamp")]

    def pools(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.get("enipools")["items"]}

    def enis(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("enis")["items"]
        return items

    def podips(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("podips", "-A")["items"]
        return items

    def pod_netns(self, pod: dict[str, Any]) -> str:
        return netns_name(pod["metadata"]["uid"])

    def ping(self, pod: dict[str, Any], ip: str, count: int = 1) -> bool:
        res = subprocess.run(["ip", "netns", "exec", self.pod_netns(pod), "ping", "-c",
                              str(count), "-W", "2", "-i", "0.2", ip], capture_output=True)
        return res.returncode == 0

    def deployment(self, name: str, replicas: int, spread: bool = True) -> None:
        spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.local/app"}],
                                "terminationGracePeriodSeconds": 0}
        if spread:
            spec["topologySpreadConstraints"] = [{
                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": name}}}]
        dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}
        self.kube.kubectl("apply", "-f", "-", input=json.dumps(dep))

    def scale(self, name: str, replicas: int) -> None:
        self.kube.kubectl("scale", "deployment", name, f"--replicas={replicas}")

    def agent_log(self, name: str) -> str:
        path = self.workdir / f"agent-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def operator_log(self) -> str:
        path = self.workdir / "operator.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal a child (SIGKILL simulates a crash), then reap it; KILL after 15 s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.5) -> Any:
    """Poll through transient errors (kubectl, the emulator) while the system converges."""
    return testing.wait_for(cond, timeout, what, interval, ignore=(Exception,))


@contextlib.contextmanager
def clusterbox(nodes: list[NodeSpec], **kwargs: Any) -> Iterator[ClusterBox]:
    box = ClusterBox(nodes, **kwargs)
    box.start()
    try:
        yield box
    finally:
        box.stop()
