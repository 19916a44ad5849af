"""The cluster in a box: the whole of eniway on one machine, for the demo and the e2e tests.

- a real control plane (``LocalCluster``: etcd, kube-apiserver, controller-manager,
  scheduler);
- ``eniway-cloudsim`` in network mode: a VPC namespace with vSwitch gateways; every
  instance is a network namespace (the node's host network) whose ENIs are veths into
  the VPC, with source/destination check;
- per node: a real node (``realnode.RealNode``: containerd in the node's namespace,
  kubelet v1.20.2 with ``maxPods`` from eniway's figure for the instance type), the
  CNI binary and conflist installed by ``eniway install-cni`` as the chart's init
  container does (portmap chained), and an ``eniway-agent`` managing the node;
- the operator, ``eniway-operator``, talking to the emulator through the official SDK.

Every process is a child in its own process group that dies with its parent. A box killed
without its clean-up is removed by the next box's start (``boxreaper``).
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boxreaper
from eniway_cloudsim.testing import SimHandle, start_subprocess
from eniway_operator import testing
from localcluster import BIN, LocalCluster, _die_with_parent, free_port
from node_images import BUSYBOX_IMAGE
from realnode import RealNode

REGION = "cn-hangzhou"
ZONE = "cn-hangzhou-i"
AWS_REGION = "us-east-1"
AWS_ZONE = "us-east-1a"
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
    real: RealNode | None = None
    metrics_port: int = 0
    metadata_url: str = ""  # the instance's metadata service (the agent checks its ENIs)

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
    operator_args: tuple[str, ...] = ()  # appended to the operator's command line
    log: Callable[[str], None] = lambda msg: None
    cloud_name: str = "aliyun"  # "aws": the EC2 dialect, boto3 and IMDSv2 throughout
    cluster: LocalCluster | None = None
    cloud: SimHandle | None = None
    operator: subprocess.Popen[bytes] | None = None
    node_by_name: dict[str, Node] = field(default_factory=dict)
    _supervisor: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

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
        boxreaper.reap(self.log)  # what boxes killed without their clean-up left
        boxreaper.claim(self.cluster_id, self.workdir)
        self.log(f"cluster {self.cluster_id}, working directory {self.workdir}")
        self.log("starting the control plane (etcd, kube-apiserver, controller-manager, "
                 "scheduler)")
        self.cluster = LocalCluster().start()
        self.log(f"  apiserver ready in {self.cluster.timings['apiserver_ready_s']:.1f}s "
                 f"at {self.cluster.server}")
        self.log("starting eniway-cloudsim with its VPC network")
        self.cloud = testing.with_provider(start_subprocess([
            "--network", "--teardown-on-exit", "--netns-prefix", f"{self.cluster_id}-",
            "--state", str(self.workdir / "cloud.db"), "--aws-region", AWS_REGION,
            "--attach-delay", str(self.attach_delay), "--detach-delay", str(self.attach_delay),
        ], region=REGION))
        if self.aws:
            topo = self.cloud.admin.bootstrap({self.zone: list(self.vswitch_cidrs)},
                                              vpc_cidr="10.0.0.0/16", cloud="aws")
        else:
            topo = self.cloud.admin.bootstrap({self.zone: list(self.vswitch_cidrs)})
        self.topology = topo
        vsws = topo.vswitch_ids(self.zone)
        self.log(f"  {self.cloud.url} ({'EC2' if self.aws else 'ECS'} API): {topo.vpc_id}, "
                 f"{'subnets' if self.aws else 'vSwitches'} {', '.join(vsws)}, "
                 f"{topo.security_group_id}")
        self._write_config(vsws, topo.security_group_id)
        for i, spec in enumerate(self.nodes):
            self._start_node(spec, vsws[i % len(vsws)], topo.security_group_id)
        self._wait_nodes()
        self.start_operator()
        self.log(f"system up in {time.monotonic() - t0:.1f}s")

    def _wait_nodes(self) -> None:
        for node in self.node_by_name.values():
            assert node.real is not None
            node.real.wait_ready()
            self.log(f"  node {node.name} Ready in "
                     f"{node.real.timings['start_to_ready_s']:.1f}s")

    def stop(self) -> None:
        """Stop everything in reverse order; pods' networks are torn down by their DEL."""
        self._stopping.set()
        for node in self.node_by_name.values():
            if node.real is not None:
                with contextlib.suppress(Exception):
                    node.real.stop()
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
        boxreaper.release(self.cluster_id)

    def __enter__(self) -> ClusterBox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pieces --------------------------------------------------------------------------

    @property
    def aws(self) -> bool:
        return self.cloud_name == "aws"

    @property
    def region(self) -> str:
        return AWS_REGION if self.aws else REGION

    @property
    def zone(self) -> str:
        return AWS_ZONE if self.aws else ZONE

    def provider(self) -> Any:
        """The operator's provider for this box's cloud, on the emulator."""
        assert self.cloud is not None
        if not self.aws:
            return self.cloud.provider()
        import boto3

        from eniway_operator.cloud.aws import AwsProvider
        return AwsProvider(AWS_REGION, endpoint=self.cloud.url, session=boto3.session.Session(
            aws_access_key_id=self.cloud.access_key_id,
            aws_secret_access_key=self.cloud.access_key_secret))

    @property
    def kube(self) -> LocalCluster:
        assert self.cluster is not None
        return self.cluster

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**self._env(), **(env or {})},
                                preexec_fn=_die_with_parent)

    def pool_settings(self, vswitches: list[str], sg: str) -> dict[str, Any]:
        """The pool configuration: the box's VPC and the test's ``pool_config``."""
        return {"vswitches": {self.zone: vswitches}, "security_group_ids": [sg],
                "max_pool_size": 5, "min_pool_size": 2, **self.pool_config}

    def _write_config(self, vswitches: list[str], sg: str) -> None:
        cfg = self.pool_settings(vswitches, sg)
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
        if self.aws:  # boto3's standard chain: here the environment
            cloud = ["--cloud", "aws", "--cloud-endpoint", self.cloud.url,
                     "--region", AWS_REGION]
            env = {"AWS_ACCESS_KEY_ID": self.cloud.access_key_id,
                   "AWS_SECRET_ACCESS_KEY": self.cloud.access_key_secret}
        else:
            cloud = ["--cloud", "cloudsim", "--cloud-endpoint", self.cloud.endpoint,
                     "--region", REGION, "--access-key-id", self.cloud.access_key_id,
                     "--access-key-secret-file", str(secret)]
            env = {}
        self.operator = self._spawn("operator", [
            sys.executable, "-m", "eniway_operator.main", "--kubeconfig",
            str(self.kube.kubeconfig), "--namespace", NAMESPACE, "--configmap", CONFIGMAP,
            "--cluster-id", self.cluster_id, *cloud,
            "--metrics-port", str(self.operator_metrics), "--gc-interval", "10",
            "--gc-grace", "20", *self.operator_args,
        ], env)
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True)
            self._supervisor.start()

    def _supervise(self) -> None:
        """Restart an operator that exits on its own (it does when it loses its Lease, e.g.
        on a loaded machine), as its Deployment would; a stop_operator() is left alone."""
        while not self._stopping.wait(1.0):
            proc = self.operator
            if proc is not None and proc.poll() is not None and proc is self.operator:
                self.log(f"operator exited ({proc.returncode}); restarting it")
                self.start_operator()

    def stop_operator(self, sig: int = signal.SIGTERM) -> None:
        proc, self.operator = self.operator, None
        _stop(proc, sig)

    def _create_node(self, spec: NodeSpec, vswitch: str, sg: str) -> tuple[Node, dict[str, Any]]:
        """The node's instance in the emulator (its network namespace); the instance."""
        assert self.cloud is not None
        netns = f"{self.cluster_id}-{spec.name}"
        inst = self.cloud.admin.create_instance(spec.instance_type, vswitch, [sg],
                                                name=spec.name, netns=netns)
        primary_ip = next(e["primary_ip"] for e in inst["enis"] if e["type"] == "Primary") \
            if "enis" in inst else inst.get("primary_ip", "")
        node = Node(spec, inst["instance_id"], netns, primary_ip, self.workdir / spec.name,
                    metadata_url=inst["metadata_url"])
        self.node_by_name[spec.name] = node
        return node, inst

    def _real_node(self, node: Node, inst: dict[str, Any], cni_bin_dir: Path,
                   cni_conf_dir: Path, host_network_pods: int = 0, **kwargs: Any) -> RealNode:
        """The instance made a real node (prepared, not started yet)."""
        labels = {"node.kubernetes.io/instance-type": node.spec.instance_type,
                  "topology.kubernetes.io/zone": self.zone,
                  "topology.kubernetes.io/region": self.region}
        # The kubelet's maxPods: the pod IPs plus the host-network pods the node runs. The
        # cloud's max-pods figure may add a guess of those (EC2's + 2: the agent's DaemonSet
        # pod and kube-proxy); a box whose agents are processes runs none, and more would
        # overcommit IPs.
        max_pods = self.provider().instance_limits(node.spec.instance_type).pod_ips \
            + host_network_pods
        return RealNode(self.kube, node.name, node.netns, node.dir, cni_bin_dir, cni_conf_dir,
                        max_pods, provider_id=inst["provider_id"], labels=labels,
                        log=self.log, **kwargs).prepare()

    def _start_node(self, spec: NodeSpec, vswitch: str, sg: str) -> None:
        node, inst = self._create_node(spec, vswitch, sg)
        ndir = node.dir
        # the project's interpreter, not whatever `eniway` is on PATH (make demo runs
        # .venv/bin/python without the virtual environment activated)
        subprocess.run([sys.executable, "-m", "cni_plugin.cli", "install-cni",
                        "--bin-dir", str(ndir / "bin"),
                        "--conf-dir", str(ndir / "net.d"), "--lib-dir", str(ndir / "opt"),
                        "--socket", str(ndir / "run" / "eniway.sock"),
                        "--state-dir", str(ndir / "state")],
                       check=True, capture_output=True)
        node.real = self._real_node(node, inst, ndir / "bin", ndir / "net.d")
        self.start_agent(spec.name)
        node.real.start()
        self._started(node)

    def _started(self, node: Node) -> None:
        assert node.real is not None
        self.log(f"  node {node.name}: {node.spec.instance_type}, {node.instance_id}, "
                 f"netns {node.netns}, {node.primary_ip}, max pods {node.real.max_pods}")

    def start_agent(self, name: str) -> None:
        node = self.node_by_name[name]
        node.metrics_port = node.metrics_port or free_port()
        assert node.real is not None
        node.agent = self._spawn(f"agent-{name}", [
            *node.real.enter(), sys.executable, "-m", "cni_plugin.agent.main", "--node-name", name,
            "--kubeconfig", str(self.kube.kubeconfig),
            "--socket", str(node.dir / "run" / "eniway.sock"),
            "--state-dir", str(node.dir / "state"), "--netns", node.netns,
            "--metrics-addr", f"127.0.0.1:{node.metrics_port}",
            "--metadata-url", node.metadata_url, "--cloud", self.cloud_name, *self.agent_args,
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

    def wait_running(self, app: str, n: int, timeout: float = 240) -> list[dict[str, Any]]:
        """The ``app=APP`` pods once exactly ``n`` exist and all are Running with an IP."""
        def ready() -> list[dict[str, Any]] | None:
            pods = self.running_pods(f"app={app}")
            return pods if len(pods) == n and len(self.pods(f"app={app}")) == n else None
        result: list[dict[str, Any]] = wait_for(ready, timeout, f"{n} running pods of {app}")
        return result

    def pools(self) -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in self.get("enipools")["items"]}

    def enis(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("enis")["items"]
        return items

    def podips(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("podips", "-A")["items"]
        return items

    def exec(self, pod: dict[str, Any], *cmd: str,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``kubectl exec`` in a pod's container (through kubelet and containerd)."""
        return subprocess.run(
            [str(BIN / "kubectl"), f"--kubeconfig={self.kube.kubeconfig}", "exec", "-n",
             pod["metadata"]["namespace"], pod["metadata"]["name"], "--", *cmd],
            capture_output=True, text=True, timeout=timeout)

    def ping(self, pod: dict[str, Any], ip: str, count: int = 1) -> bool:
        return self.exec(pod, "ping", "-c", str(count), "-W", "2", "-i", "0.2",
                         ip).returncode == 0

    def fetch(self, pod: dict[str, Any], url: str) -> str | None:
        """The body of an HTTP GET from inside a pod (busybox wget), None on failure."""
        # no -T: Debian's static busybox wget crashes with it; the exec has a timeout
        res = self.exec(pod, "wget", "-q", "-O", "-", url)
        return res.stdout if res.returncode == 0 else None

    def node_fetch(self, name: str, url: str) -> str | None:
        """An HTTP GET from a node's own network (busybox wget), None on failure."""
        res = subprocess.run(["nsenter", f"--net=/run/netns/{self.node_by_name[name].netns}",
                              "busybox", "wget", "-q", "-O", "-", url],
                             capture_output=True, text=True, timeout=30)
        return res.stdout if res.returncode == 0 else None

    @property
    def internet_netns(self) -> str:
        """The emulator's internet: a client there reaches pods at their EIPs."""
        return f"{self.cluster_id}-internet"

    def internet_fetch(self, url: str) -> str | None:
        """An HTTP GET from the internet namespace (busybox wget), None on failure."""
        res = subprocess.run(["nsenter", f"--net=/run/netns/{self.internet_netns}",
                              "busybox", "wget", "-q", "-O", "-", url],
                             capture_output=True, text=True, timeout=30)
        return res.stdout if res.returncode == 0 else None

    def deployment(self, name: str, replicas: int, spread: bool = True,
                   even: bool = False) -> None:
        """busybox pods spread over the nodes (``even``: never more than one apart)."""
        spec = pod_spec()
        if spread:
            spec["topologySpreadConstraints"] = [{
                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule" if even else "ScheduleAnyway",
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


def pod_spec(host_port: int = 0) -> dict[str, Any]:
    """A busybox pod serving its own name over HTTP on port 8080 (node images only,
    nothing pulled)."""
    port: dict[str, Any] = {"containerPort": 8080}
    if host_port:
        port["hostPort"] = host_port
    return {
        "containers": [{
            "name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
            "command": ["sh", "-c", "hostname > /www/index.html; exec httpd -f -p 8080 -h /www"],
            "ports": [port]}],
        "terminationGracePeriodSeconds": 0, "automountServiceAccountToken": False,
        "enableServiceLinks": False}


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
