"""Test harness for the node side: a real emulated node network, an operator double
that drives the agent through the same resources the operator writes, an agent
process runner and a CNI caller that runs the installed shim as a runtime would.

Topology (all real namespaces and veths):

    VPC netns: bridge vsw0 = the vSwitch, gateway 10.<n>.0.1/24 on it
        |-- v0 --- eth0 (node netns): primary ENI, 10.<n>.0.10/24, default via gateway
        |-- v1 --- eth1 (node netns): secondary ENI, MAC 02:ee:<n>:00:00:01, down
        `-- v2 --- eth2 (node netns): secondary ENI, MAC 02:ee:<n>:00:00:02, down

The VPC fabric knows which ENI owns each secondary IP: ``assign`` installs a
permanent neighbour (IP -> ENI MAC) on vsw0, as the cloud does when it assigns an IP.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_plugin import cli, contract
from eniway_operator.testing import wait_for as wait_for  # re-exported for the node tests
from localcluster import LocalCluster, free_port

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # the project's virtual environment: its packages, not the base's
CNI_PLUGINS = Path("/usr/lib/cni")


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)




@dataclass
class Eni:
    id: str
    mac: str
    ifname: str
    index: int
    primary: bool = False
    ips: list[str] = field(default_factory=list)


class NodeNetwork:
    """One emulated node: a node netns wired to a VPC netns by three ENIs."""

    def __init__(self, n: int | None = None, secondaries: int = 2) -> None:
        self.tag = secrets.token_hex(3)
        self.n = n if n is not None else 100 + secrets.randbelow(100)
        self.node_ns = f"ewn-{self.tag}"
        self.vpc_ns = f"ewv-{self.tag}"
        self.cidr = f"10.{self.n}.0.0/24"
        self.gateway = f"10.{self.n}.0.1"
        self.node_ip = f"10.{self.n}.0.10"
        self.enis = [Eni(f"eni-{self.tag}{i:02d}", f"02:ee:{self.n % 256:02x}:00:00:{i:02x}",
                         f"eth{i}", i, primary=(i == 0)) for i in range(secondaries + 1)]
        self.pods: list[str] = []

    def create(self) -> NodeNetwork:
        v, n = self.vpc_ns, self.node_ns
        sh(f"ip netns add {v} && ip netns add {n}")
        for ns in (v, n):  # no IPv6 chatter: ENI packet counters then count only our pings
            sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
               "net.ipv6.conf.default.disable_ipv6=1")
        sh(f"ip -n {v} link set lo up && ip -n {n} link set lo up")
        sh(f"ip -n {v} link add vsw0 type bridge && ip -n {v} link set vsw0 up")
        sh(f"ip -n {v} addr add {self.gateway}/24 dev vsw0")
        for e in self.enis:
            sh(f"ip -n {v} link add v{e.index} type veth peer name {e.ifname} netns {n}")
            sh(f"ip -n {n} link set {e.ifname} address {e.mac}")
            sh(f"ip -n {v} link set v{e.index} master vsw0 up")
        sh(f"ip -n {n} addr add {self.node_ip}/24 dev eth0 && ip -n {n} link set eth0 up")
        sh(f"ip -n {n} route add default via {self.gateway}")
        return self

    def destroy(self) -> None:
        for ns in [*self.pods, self.node_ns, self.vpc_ns]:
            sh(f"ip netns del {ns}", check=False)
        self.pods.clear()

    def assign(self, eni: Eni, ips: list[str]) -> None:
        """The cloud assigns secondary IPs to an ENI: the VPC now delivers them to it."""
        for ip in ips:
            sh(f"ip -n {self.vpc_ns} neigh replace {ip} lladdr {eni.mac} dev vsw0 nud permanent")
        eni.ips += ips

    def pod_netns(self, name: str | None = None) -> str:
        name = name or f"ewp-{self.tag}-{secrets.token_hex(3)}"
        sh(f"ip netns add {name}")
        self.pods.append(name)
        return name

    def remove_pod_netns(self, name: str) -> None:
        sh(f"ip netns del {name}", check=False)
        with contextlib.suppress(ValueError):
            self.pods.remove(name)

    def tx_packets(self, ifname: str) -> int:
        out = sh(f"ip -n {self.node_ns} -s -j link show {ifname}").stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["packets"])

    def node(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(f"ip -n {self.node_ns} {cmd}", check=check)

    def ping(self, netns: str, dst: str, count: int = 1) -> bool:
        return sh(f"ip netns exec {netns} ping -n -q -c {count} -i 0.2 -W 2 {dst}",
                  check=False).returncode == 0


class OperatorDouble:
    """Writes ENI and ENIPool objects exactly as the operator does (the contract in
    helpers/common.md), so the agent is driven only through the API server."""

    def __init__(self, cluster: LocalCluster, node: str, net: NodeNetwork) -> None:
        self.cluster, self.node, self.net = cluster, node, net
        self.base = f"/apis/{contract.API_VERSION}"

    def _req(self, method: str, path: str, body: Any = None,
             ctype: str = "application/json") -> dict[str, Any]:
        code, obj = self.cluster.request(method, path, body, content_type=ctype)
        if code >= 300:
            raise RuntimeError(f"{method} {path}: {code} {obj}")
        return obj

    def create_node(self) -> None:
        self.cluster.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node},
            "spec": {"providerID": f"cn-test.i-{self.net.tag}node"}})

    def create_pool(self) -> None:
        self._req("POST", f"{self.base}/enipools", {
            "apiVersion": contract.API_VERSION, "kind": contract.KIND_ENIPOOL,
            "metadata": {"name": self.node},
            "spec": {"nodeName": self.node, "instanceId": f"i-{self.net.tag}node",
                     "instanceType": "ecs.g6.large", "zoneId": "cn-test-a", "vpcId": "vpc-test"}})

    def put_eni(self, eni: Eni, phase: str = contract.PHASE_INUSE,
                states: dict[str, str] | None = None) -> None:
        spec = {"nodeName": self.node, "instanceId": f"i-{self.net.tag}node",
                "deviceIndex": eni.index, "primary": eni.primary, "managed": not eni.primary,
                "macAddress": eni.mac, "vpcId": "vpc-test", "zoneId": "cn-test-a",
                "vSwitchId": "vsw-test0001", "vSwitchCidr": self.net.cidr,
                "gatewayIP": self.net.gateway, "primaryIP": self.net.node_ip if eni.primary
                else f"10.{self.net.n}.0.{20 + eni.index}", "mtu": 1500,
                "securityGroupIds": ["sg-test0001"], "deleteOnRelease": not eni.primary}
        code, _ = self.cluster.request("GET", f"{self.base}/enis/{eni.id}")
        if code == 404:
            self._req("POST", f"{self.base}/enis", {
                "apiVersion": contract.API_VERSION, "kind": contract.KIND_ENI,
                "metadata": {"name": eni.id, "labels": {contract.LABEL_NODE: self.node}},
                "spec": spec})
        ips = [{"ip": ip, "state": (states or {}).get(ip, contract.IP_FREE)} for ip in eni.ips]
        self._req("PATCH", f"{self.base}/enis/{eni.id}/status", {"status": {
            "phase": phase, "ips": ips, "ipCount": len(ips)}},
            ctype="application/merge-patch+json")

    def setup(self, ips_per_eni: int = 10) -> None:
        """Node, pool, primary ENI (no pod IPs) and secondaries with ``ips_per_eni`` each."""
        self.create_node()
        self.create_pool()
        for e in self.net.enis:
            if not e.primary:
                base = 100 * e.index
                self.net.assign(e, [f"10.{self.net.n}.0.{base + k}"
                                    for k in range(1, ips_per_eni + 1)])
            self.put_eni(e)

    def release(self, ips: list[str], token: str | None = None) -> str:
        """List ``ips`` for release under ``token`` (a new one by default); returns it."""
        token = token or secrets.token_hex(8)
        self._req("PATCH", f"{self.base}/enipools/{self.node}", {
            "spec": {"release": {"ips": ips, "requestedAt": "2026-01-01T00:00:00Z",
                                 contract.RELEASE_TOKEN: token}}},
            ctype="application/merge-patch+json")
        return token

    def pool(self) -> dict[str, Any]:
        return self._req("GET", f"{self.base}/enipools/{self.node}")

    def agent_status(self) -> dict[str, Any]:
        return dict((self.pool().get("status") or {}).get("agent") or {})

    def podips(self) -> dict[str, dict[str, Any]]:
        obj = self._req("GET", f"{self.base}/podips?labelSelector="
                        f"{contract.LABEL_NODE}%3D{self.node}")
        return {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o["spec"]
                for o in obj.get("items", [])}

    def create_pod(self, namespace: str, name: str) -> str:
        """A Pod bound to this node (no kubelet runs it: it only has to exist for GC)."""
        self.cluster.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        pod = self._req("POST", f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": self.node, "containers": [{"name": "c", "image": "none"}]}})
        return str(pod["metadata"]["uid"])

    def delete_pod(self, namespace: str, name: str) -> None:
        self.cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                             {"gracePeriodSeconds": 0})

    def cleanup(self) -> None:
        for key in self.podips():  # PodIPs the agent had no time to delete before it stopped
            ns, name = key.split("/", 1)
            self.cluster.request("DELETE", f"{self.base}/namespaces/{ns}/podips/{name}")
        for e in self.net.enis:
            self.cluster.request("DELETE", f"{self.base}/enis/{e.id}")
        self.cluster.request("DELETE", f"{self.base}/enipools/{self.node}")
        self.cluster.request("DELETE", f"/api/v1/nodes/{self.node}")


class AgentProcess:
    """An ``eniway-agent`` for one emulated node, run as a real process."""

    def __init__(self, workdir: Path, node: str, kubeconfig: Path, netns: str,
                 extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.node = node
        self.socket = str(workdir / "run" / "eniway.sock")
        self.state_dir = str(workdir / "state")
        self.port = free_port()
        self.args = [PYTHON, "-m", "cni_plugin.agent.main", "--node-name", node,
                     "--kubeconfig", str(kubeconfig), "--netns", netns, "--socket", self.socket,
                     "--state-dir", self.state_dir, "--metrics-addr", f"127.0.0.1:{self.port}",
                     "--cooldown", "0", "--gc-interval", "1", "--gc-grace", "2",
                     "--heartbeat-interval", "2", "--resync-interval", "2", *(extra or [])]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "agent.log"

    def start(self, wait_ready: bool = True) -> AgentProcess:
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=REPO, start_new_session=True)
        if wait_ready:
            wait_for(self.ready, 30, f"agent {self.node} ready\n{self.tail()}")
        return self

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.tail()}")
        return self.http("/readyz")[0] == 200

    def metric(self, name: str, labels: str = "") -> float:
        _, body = self.http("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + ("{" if labels or "{" in line else " ")) and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def status(self) -> dict[str, Any]:
        from cni_plugin.shim import call_agent
        answer = call_agent(self.socket, {"command": contract.WIRE_STATUS}, 5)
        return dict(answer.get("result") or {})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def tail(self, n: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@dataclass
class CniResult:
    rc: int
    out: dict[str, Any]
    stderr: str

    @property
    def ip(self) -> str:
        return str(self.out["ips"][0]["address"]).split("/")[0]


class Shim:
    """The installed CNI binary (``eniway install-cni`` into a temp dir), run like a
    runtime runs it: env vars, config on stdin, JSON on stdout."""

    def __init__(self, workdir: Path, socket: str, state_dir: str) -> None:
        self.bin_dir = workdir / "bin"
        self.conf_dir = workdir / "net.d"
        cli.install_cni(self.bin_dir, self.conf_dir, workdir / "lib", PYTHON, None, socket,
                        None, state_dir)
        for plugin in ("portmap", "bandwidth", "tuning", "loopback"):
            dst = self.bin_dir / plugin
            if not dst.exists():
                dst.symlink_to(CNI_PLUGINS / plugin)
        self.conflist = json.loads((self.conf_dir / contract.CNI_CONFLIST_NAME).read_text())
        self.binary = self.bin_dir / contract.CNI_BINARY_NAME

    def conf(self, version: str = contract.CNI_SPEC_VERSION, **extra: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": self.conflist["name"],
                **self.conflist["plugins"][0], **extra}

    def run(self, command: str, container_id: str = "", netns: str = "", ifname: str = "eth0",
            pod: tuple[str, str, str] | None = None, conf: dict[str, Any] | str | None = None,
            env: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> CniResult:
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
             "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
             "CNI_PATH": str(self.bin_dir)}
        if pod:
            e["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};"
                             f"K8S_POD_UID={pod[2]};K8S_POD_INFRA_CONTAINER_ID={container_id}")
        e.update(env or {})
        for k in drop:
            e.pop(k, None)
        stdin = conf if isinstance(conf, str) else json.dumps(conf or self.conf())
        p = subprocess.run([str(self.binary)], input=stdin, env=e, capture_output=True,
                           text=True, timeout=90)
        out = json.loads(p.stdout) if p.stdout.strip() else {}
        return CniResult(p.returncode, out, p.stderr)

    def add(self, container_id: str, netns: str, pod: tuple[str, str, str] | None = None,
            **kw: Any) -> CniResult:
        return self.run("ADD", container_id, f"/run/netns/{netns}", pod=pod, **kw)

    def delete(self, container_id: str, netns: str = "",
               pod: tuple[str, str, str] | None = None, **kw: Any) -> CniResult:
        path = f"/run/netns/{netns}" if netns else ""
        return self.run("DEL", container_id, path, pod=pod, **kw)


@dataclass
class NodeEnv:
    """Everything one node test needs, torn down in reverse order."""

    net: NodeNetwork
    op: OperatorDouble
    agent: AgentProcess
    shim: Shim
    workdir: Path

    def host_state(self) -> dict[str, str]:
        """Links, rules and main-table routes of the node netns (to prove nothing leaks)."""
        return {
            "links": self.net.node("-o link show", check=False).stdout,
            "rules": self.net.node("rule show", check=False).stdout,
            "routes": self.net.node("route show table main", check=False).stdout,
        }

    def pod_artifacts(self) -> list[str]:
        """Every host-side trace of pods: veths, pod rules, /32 routes, store records."""
        found = []
        for line in self.net.node("-o link show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(contract.VETH_PREFIX) and len(name) == 14:
                found.append(f"link {name}")
        for line in self.net.node("rule show", check=False).stdout.splitlines():
            if line.startswith(("512:", "2048:")):
                found.append(f"rule {line.strip()}")
        for line in self.net.node("route show table main", check=False).stdout.splitlines():
            if f" dev {contract.VETH_PREFIX}" in line:
                found.append(f"route {line.strip()}")
        adir = Path(self.agent.state_dir) / contract.STORE_ALLOC_DIR
        if adir.exists():
            found += [f"record {p.name}" for p in adir.iterdir() if not p.name.startswith(".")]
        return found


def make_node_env(cluster: LocalCluster, workdir: Path, ips_per_eni: int = 10,
                  agent_extra: list[str] | None = None, start_agent: bool = True) -> NodeEnv:
    net = NodeNetwork().create()
    node = f"node-{net.tag}"
    op = OperatorDouble(cluster, node, net)
    try:
        op.setup(ips_per_eni)
        agent = AgentProcess(workdir, node, cluster.kubeconfig, net.node_ns, agent_extra)
        shim = Shim(workdir, agent.socket, agent.state_dir)
        if start_agent:
            agent.start()
    except BaseException:
        op.cleanup()
        net.destroy()
        raise
    return NodeEnv(net, op, agent, shim, workdir)


def teardown_node_env(env: NodeEnv) -> None:
    env.agent.stop()
    env.op.cleanup()
    env.net.destroy()


class OtherNodes:
    """``count`` more nodes as the operator leaves them: a Node object and one secondary
    ENI resource each (labelled with its node), so an agent's watches can be measured
    against a cluster of many nodes. ``touch`` changes every one of their ENIs once."""

    def __init__(self, cluster: LocalCluster, count: int, prefix: str = "") -> None:
        self.cluster = cluster
        self.prefix = prefix or f"other{secrets.token_hex(2)}"
        self.names = [f"{self.prefix}n{i:04d}" for i in range(count)]
        self.base = f"/apis/{contract.API_VERSION}/{contract.PLURAL_ENI}"
        self.generation = 0

    def _ok(self, method: str, path: str, body: Any = None,
            ctype: str = "application/json") -> None:
        code, obj = self.cluster.request(method, path, body, content_type=ctype)
        if code >= 300:
            raise RuntimeError(f"{method} {path}: {code} {obj}")

    def eni(self, node: str) -> str:
        return f"eni-{node}"  # names and ids: [0-9a-z] only, as the CRD wants

    def create(self) -> OtherNodes:
        for i, node in enumerate(self.names):
            self._ok("POST", "/api/v1/nodes", {
                "apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                "spec": {"providerID": f"cn-test.i-{node}"}})
            self._ok("POST", self.base, {
                "apiVersion": contract.API_VERSION, "kind": contract.KIND_ENI,
                "metadata": {"name": self.eni(node), "labels": {contract.LABEL_NODE: node}},
                "spec": {"nodeName": node, "instanceId": f"i-{node}", "primary": False,
                         "managed": True,
                         "macAddress": f"02:ef:{i // 256:02x}:{i % 256:02x}:00:01",
                         "deviceIndex": 1, "vpcId": "vpc-test", "zoneId": "cn-test-a",
                         "vSwitchId": "vsw-test0001", "vSwitchCidr": "10.250.0.0/16",
                         "gatewayIP": "10.250.255.253",
                         "primaryIP": f"10.250.{i // 250}.{i % 250 + 1}"}})
        self.touch()
        return self

    def touch(self) -> None:
        """One status write per ENI: what each round of the operator may do to a node."""
        self.generation += 1
        for node in self.names:
            self._ok("PATCH", f"{self.base}/{self.eni(node)}/status", {"status": {
                "phase": contract.PHASE_INUSE, "ipCount": self.generation, "ips": []}},
                ctype="application/merge-patch+json")

    def delete(self) -> None:
        for node in self.names:
            self.cluster.request("DELETE", f"{self.base}/{self.eni(node)}")
            self.cluster.request("DELETE", f"/api/v1/nodes/{node}")


def watch_counts(agent: AgentProcess, resource: str = "enis") -> dict[str, float]:
    """What the agent's watches received: {"<via>/<scope>": objects} (via list or watch,
    scope own or other node)."""
    out = {}
    for via in ("list", "watch"):
        for scope in ("own", "other"):
            out[f"{via}/{scope}"] = agent.metric(
                "eniway_kube_watch_objects_total",
                f'resource="{resource}",scope="{scope}",via="{via}"')
    return out
