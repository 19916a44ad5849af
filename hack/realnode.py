#!/usr/bin/env python3
"""A real Kubernetes node on an emulated instance: containerd and kubelet v1.20.2.

An eniway-cloudsim instance is a network namespace (the node's host network). This
makes it a node the way a cloud image does:

- a private mount namespace (a ``holder`` process keeps it) with the node's own
  ``/var/lib/kubelet``, ``/var/log/pods``, ``/var/log/containers``, ``/var/lib/cni``,
  ``/run/containerd`` and ``/run/netns`` bound from the node's directory, and files
  bound over the ``/proc/sys`` entries kubelet sets at start, so the host keeps its
  sysctls; pod network namespaces (``cni-*``) live only in there;
- containerd in the node's network namespace (every CNI call runs there, so portmap's
  rules land in the node), with its own root, state, socket, CNI directories and
  sandbox image, and the node images imported;
- kubelet in the host network (it reaches the apiserver on loopback) with a node
  client certificate, its own cgroup root, ports and ``maxPods``;
- a relay from the host's loopback to containerd's streaming server in the node's
  network, so ``kubectl exec`` works; and, for pods on the node's host network, relays
  from the node's loopback to services on the host's (``loopback_ports``: the apiserver,
  the emulator), as a node-local load balancer in front of the API server would.

Where a node runs eniway from its chart, ``host_paths`` are the directories the chart's
pods use on the host (``/opt/cni/bin``, ``/etc/cni/net.d``, ...): each node gets its own,
and containerd reads the CNI plugins and conflist from the node's ``/opt/cni/bin`` and
``/etc/cni/net.d`` as on a real node (the system plugins are linked into it). With
``kubelet_in_node`` kubelet runs in the node's network too, so its probes of host-network
pods reach them on the node's loopback, as on a real node: its address (the host's, which
the apiserver dials) is added to the node's loopback and relayed to from the host's.

Every process runs in the node's ``pids`` cgroup (``/<cgroup root>/runtime``), so
``stop()`` finds and ends containers, shims, containerd and kubelet alike, then
removes the cgroups, mounts (with the namespace) and files: nothing is left.

    python3 hack/realnode.py relay HOST_PORT NETNS TARGET_PORT [ADDRESS]   # internal
    python3 hack/realnode.py relay-to-host NETNS PORT            # internal
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localcluster import BIN, CACHE, LocalCluster, _die_with_parent, free_port
from node_images import BUSYBOX_IMAGE, PAUSE_IMAGE, archive_name

CGROUP_FS = Path("/sys/fs/cgroup")
IMAGES = [CACHE / "images" / archive_name(ref) for ref in (PAUSE_IMAGE, BUSYBOX_IMAGE)]
SYSTEM_CNI_BIN = Path("/usr/lib/cni")
# kubelet 1.20 writes these machine-wide at start (setupKernelTunables)
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
                   "kernel/keys/root_maxbytes")
# hard-coded paths of kubelet and containerd, bound per node in its mount namespace
NODE_PATHS = ("/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/cni",
              "/run/containerd")
_CLONE_NEWNET = 0x40000000


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup v1 hierarchies (kubelet's cgroupfs driver uses each) and,
    on a hybrid machine, the unified one."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mnt, fstype, opts, *_ = line.split()
        if fstype == "cgroup2" or (fstype == "cgroup" and mnt.startswith(str(CGROUP_FS))):
            out.append(Path(mnt))
        del opts
    return out


def host_ip() -> str:
    """The host's first global IPv4 address: the kubelets' InternalIP (the apiserver
    dials it; a node IP may not be loopback)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        return line.split()[3].split("/")[0]
    raise RuntimeError("no global IPv4 address on the host for the kubelets")


@dataclass
class RealNode:
    """One node; ``prepare()`` then ``start()``; ``stop()`` removes everything."""

    cluster: LocalCluster
    name: str
    netns: str
    dir: Path
    cni_bin_dir: Path
    cni_conf_dir: Path
    max_pods: int
    provider_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = lambda msg: None
    host_paths: tuple[str, ...] = ()  # more host directories of the node's own
    images: tuple[Path, ...] = ()  # more image archives imported into containerd
    loopback_ports: tuple[int, ...] = ()  # host loopback ports the node's loopback reaches
    kubelet_in_node: bool = False  # kubelet in the node's network namespace too
    holder: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None
    kubelet: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    relays_in: list[subprocess.Popen[bytes]] = field(default_factory=list)
    kubelet_relay: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cgroup_root = f"/eniway-{self.netns}"
        self.ports = {"kubelet": free_port(), "healthz": free_port(), "stream": free_port()}
        self.node_ip = host_ip()

    # -- paths ---------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    def node_path(self, path: str | Path) -> Path:
        """The host directory bound at ``path`` (a NODE_PATHS or host_paths entry) in the
        node's mount namespace."""
        return self.dir / "root" / str(path).strip("/").replace("/", "-")

    @property
    def bound_paths(self) -> tuple[str, ...]:
        return (*NODE_PATHS, *self.host_paths)

    @property
    def mount_ns(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/mnt"

    def enter(self, net: bool = False) -> list[str]:
        """The command prefix that runs something inside the node (its mount
        namespace; with ``net`` also its network namespace)."""
        cmd = ["nsenter", f"--mount={self.mount_ns}"]
        return [*cmd, f"--net=/run/netns/{self.netns}"] if net else cmd

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), "ctr", "--address", str(self.socket),
                               "-n", "k8s.io", *args], capture_output=True, text=True)

    def sandboxes(self) -> set[str]:
        """Ids of the pod sandboxes (pause containers) containerd holds."""
        res = self.ctr("containers", "ls", "-q", f"image=={PAUSE_IMAGE}")
        if res.returncode:
            raise RuntimeError(f"ctr containers ls: {res.stderr.strip()}")
        return set(res.stdout.split())

    # -- lifecycle -----------------------------------------------------------------------

    def prepare(self) -> RealNode:
        """The node's mount namespace and cgroups: what its agent also runs in."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.bound_paths:  # mount points; a node image has them
            Path(path).mkdir(parents=True, exist_ok=True)
        self._cgroups()
        self._start_holder()
        return self

    def start(self) -> RealNode:
        """containerd (images imported), then kubelet; ``wait_ready()`` waits for Ready."""
        self._t0 = time.monotonic()
        self.start_containerd()
        self._import_images()
        for port in self.loopback_ports:
            self.relays_in.append(self._spawn(f"relay-to-host-{port}", [
                sys.executable, str(Path(__file__).resolve()), "relay-to-host", self.netns,
                str(port)]))
        self.start_kubelet()
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait(self._ready, timeout, "node Ready")
        self.timings.setdefault("start_to_ready_s", time.monotonic() - self._t0)

    def stop(self) -> None:
        for proc in (self.kubelet, self.relay, self.kubelet_relay, *self.relays_in):
            _end(proc)
        self._kill_cgroup_tree()
        for proc in (self.containerd, self.holder):
            _end(proc)
        self._remove_cgroups()
        shutil.rmtree(self.dir / "containerd", ignore_errors=True)
        shutil.rmtree(self.dir / "root", ignore_errors=True)

    # -- mount namespace -----------------------------------------------------------------

    def _start_holder(self) -> None:
        root = self.dir / "root"
        script = ["set -e", "mount --make-rprivate /"]
        for path in self.bound_paths:
            src = self.node_path(path)
            src.mkdir(parents=True, exist_ok=True)
            script.append(f"mount --bind {src} {path}")
        sysctl = root / "proc-sys"
        sysctl.mkdir(parents=True, exist_ok=True)
        for key in KUBELET_SYSCTLS:
            f = sysctl / key.replace("/", ".")
            f.write_text(Path("/proc/sys", key).read_text())
            script.append(f"mount --bind {f} /proc/sys/{key}")
        # the node's own /run/netns: the node's network plus the pods' (cni-*)
        netns = root / "netns"
        netns.mkdir(exist_ok=True)
        (netns / self.netns).touch()
        script += [f"mount --bind /run/netns/{self.netns} {netns / self.netns}",
                   f"mount --rbind {netns} /run/netns",
                   f"touch {root / 'ready'}", "exec sleep infinity"]
        if self.host_paths:  # as under systemd: a pod's HostToContainer mount (the chart's
            # agent's /var/run/netns, for the netns made later) needs a shared mount
            script.insert(-2, "mount --make-rshared /")
        (root / "ready").unlink(missing_ok=True)
        self.holder = self._spawn("holder", ["unshare", "--mount", "--propagation", "private",
                                             "sh", "-c", "\n".join(script)])
        self._wait(lambda: (root / "ready").exists(), 10, "node mount namespace")

    # -- cgroups -------------------------------------------------------------------------

    def _cgroups(self) -> None:
        for h in cgroup_hierarchies():
            d = h / self.cgroup_root.lstrip("/")
            d.mkdir(exist_ok=True)
            if (h / "cpuset.cpus").exists():
                for f in ("cpuset.cpus", "cpuset.mems"):
                    (d / f).write_text((h / f).read_text())
        (self._pids_dir() / "runtime").mkdir(exist_ok=True)

    def _pids_dir(self) -> Path:
        return CGROUP_FS / "pids" / self.cgroup_root.lstrip("/")

    def _join_cgroup(self) -> None:
        """preexec_fn: into the node's pids cgroup, then die with the parent."""
        (self._pids_dir() / "runtime" / "cgroup.procs").write_text(str(os.getpid()))
        _die_with_parent()

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for procs in self._pids_dir().rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in procs.read_text().split()}
        return pids

    def _kill_cgroup_tree(self) -> None:
        deadline = time.monotonic() + 15
        while (pids := self._cgroup_pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def _remove_cgroups(self) -> None:
        for h in cgroup_hierarchies():
            top = h / self.cgroup_root.lstrip("/")
            if not top.exists():
                continue
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, top]:
                for _ in range(50):  # a killed process leaves its cgroup shortly after
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)

    # -- containerd ----------------------------------------------------------------------

    def _containerd_config(self) -> Path:
        base = self.dir / "containerd"
        if str(self.cni_bin_dir) in self.host_paths:  # the node's own, filled by a pod
            bin_dir, plugins = self.cni_bin_dir, list(SYSTEM_CNI_BIN.iterdir())
            links = self.node_path(bin_dir)
        else:  # eniway + system plugins
            bin_dir = links = self.dir / "cni-bin"
            plugins = [*SYSTEM_CNI_BIN.iterdir(), *self.cni_bin_dir.iterdir()]
        links.mkdir(parents=True, exist_ok=True)
        for p in plugins:
            link = links / p.name
            link.unlink(missing_ok=True)
            link.symlink_to(p)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        cfg = f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "{self.ports['stream']}"
  [{cri}.cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{self.cni_conf_dir}"
    max_conf_num = 1
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        Root = "{base / 'runc'}"
"""
        path = self.dir / "containerd.toml"
        path.write_text(cfg)
        return path

    def start_containerd(self) -> None:
        cfg = self._containerd_config()
        self.socket.unlink(missing_ok=True)
        self.containerd = self._spawn("containerd", [*self.enter(net=True), "containerd",
                                                     "--config", str(cfg)])
        self._wait(lambda: self.ctr("version").returncode == 0, 30, "containerd")
        if self.relay is None or self.relay.poll() is not None:
            self.relay = self._spawn("relay", [
                sys.executable, str(Path(__file__).resolve()), "relay",
                str(self.ports["stream"]), self.netns, str(self.ports["stream"])])

    def _import_images(self) -> None:
        for image in (*IMAGES, *self.images):
            if not image.exists():
                raise RuntimeError(f"{image} missing: run make deps")
            res = self.ctr("images", "import", str(image))
            if res.returncode:
                raise RuntimeError(f"ctr images import {image}: {res.stderr.strip()}")

    # -- kubelet -------------------------------------------------------------------------

    def _kubelet_config(self) -> Path:
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.node_ip, "port": self.ports["kubelet"],
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.ports["healthz"],
            "readOnlyPort": 0,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.cluster.ca_file)}},
            "authorization": {"mode": "AlwaysAllow"},  # only CA-signed clients get in
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True, "enforceNodeAllocatable": ["pods"],
            "failSwapOn": False, "makeIPTablesUtilChains": False, "oomScoreAdj": 0,
            "nodeStatusUpdateFrequency": "1s", "maxPods": self.max_pods,
            "serializeImagePulls": False,
            # a shared test machine's disk and memory are not this node's to guard
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        }
        path = self.dir / "kubelet.json"
        path.write_text(json.dumps(cfg, indent=2))
        return path

    def start_kubelet(self) -> None:
        if not (BIN / "kubelet").exists():
            raise RuntimeError(f"{BIN / 'kubelet'} missing: run make deps")
        kubeconfig = self.dir / "kubelet.kubeconfig"
        if not kubeconfig.exists():
            shutil.copy(self.cluster.node_kubeconfig(self.name), kubeconfig)
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        args = [str(BIN / "kubelet"), f"--config={self._kubelet_config()}",
                f"--kubeconfig={kubeconfig}", "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{self.socket}",
                f"--hostname-override={self.name}", f"--node-ip={self.node_ip}",
                f"--cert-dir={self.dir / 'kubelet-pki'}", "--v=1"]
        if self.provider_id:
            args.append(f"--provider-id={self.provider_id}")
        if labels:
            args.append(f"--node-labels={labels}")
        if self.kubelet_in_node:
            self._kubelet_address_in_node()
        self.kubelet = self._spawn("kubelet", [*self.enter(net=self.kubelet_in_node), *args])

    def _kubelet_address_in_node(self) -> None:
        """kubelet's address on the node's loopback (kubelet wants its node IP on one of
        its interfaces), reached from the host's at the same address through a relay."""
        subprocess.run(["ip", "-n", self.netns, "addr", "replace", f"{self.node_ip}/32",
                        "dev", "lo"], check=True, capture_output=True)
        if self.kubelet_relay is None or self.kubelet_relay.poll() is not None:
            port = str(self.ports["kubelet"])
            self.kubelet_relay = self._spawn("kubelet-relay", [
                sys.executable, str(Path(__file__).resolve()), "relay", port, self.netns, port,
                self.node_ip])

    def restart(self, sig: int = signal.SIGKILL) -> None:
        """Kill kubelet and containerd (pods' shims and containers keep running), then
        start both again."""
        for proc in (self.kubelet, self.containerd):
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
                proc.wait(15)
        self.start_containerd()
        self.start_kubelet()

    def _ready(self) -> bool:
        code, node = self.cluster.request("GET", f"/api/v1/nodes/{self.name}")
        if code != 200:
            return False
        conds = node.get("status", {}).get("conditions", [])  # type: ignore[attr-defined]
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    # -- helpers -------------------------------------------------------------------------

    def _spawn(self, what: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{what}.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=self._join_cgroup)

    def log_tail(self, what: str, lines: int = 20) -> str:
        path = self.dir / f"{what}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            for name in ("holder", "containerd", "kubelet"):
                proc = getattr(self, name)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: {name} exited {proc.returncode}:\n"
                                       f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} not after {timeout}s:\n"
                                   f"{self.log_tail('kubelet')}")
            time.sleep(0.1)

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of the node's daemons (kubelet, containerd)."""
        out = {}
        for name in ("kubelet", "containerd"):
            proc = getattr(self, name)
            if proc is not None and proc.poll() is None:
                out[name] = proc_rss_kib(proc.pid)
        return out


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _end(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- relay: host loopback -> containerd's streaming server in the node's network ------------

def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _setns(path: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open(path) as f:
        if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")


def relay(listen_port: int, netns: str, target_port: int, to_host: bool = False,
          address: str = "127.0.0.1") -> None:
    """Listen on the host's ``address`` (loopback), then move into the node's network:
    every connection accepted is forwarded to ``target_port`` at the same address there.
    ``to_host``: the other way, from the node's to the host's."""
    if to_host:
        host_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        _setns(f"/run/netns/{netns}")
    listener = socket.create_server((address, listen_port), reuse_port=False)
    _setns(f"/proc/self/fd/{host_fd}" if to_host else f"/run/netns/{netns}")
    while True:
        conn, _ = listener.accept()
        try:
            upstream = socket.create_connection((address, target_port), timeout=5)
        except OSError:
            conn.close()
            continue
        upstream.settimeout(None)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) in (4, 5) and argv[0] == "relay":
        relay(int(argv[1]), argv[2], int(argv[3]), address=(argv[4:] or ["127.0.0.1"])[0])
        return 0
    if len(argv) == 3 and argv[0] == "relay-to-host":
        relay(int(argv[2]), argv[1], int(argv[2]), to_host=True)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
