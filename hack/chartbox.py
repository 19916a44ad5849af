"""The cluster in a box with eniway installed by ``helm install``: its chart on real nodes.

The control plane, the emulator and the real nodes of ``ClusterBox``, but none of
eniway's processes: eniway's image, built offline by hack/build_image.py, is imported into
each node's containerd, and the chart's objects do the rest (the init container installs
the CNI binary and conflist on each node, the agent DaemonSet serves the CNI calls, the
operator Deployment warms the pools).

Each node has its own copy of the host directories the chart's pods use (``/opt/cni/bin``,
``/etc/cni/net.d``, ``/opt/eniway``, ``/run/eniway``, ``/var/lib/eniway``), and containerd
takes its CNI plugins and conflist from there. The pods on the node's host network reach
the apiserver and the emulator on the node's loopback, at the ports they listen on on the
host's (relays, as a node-local load balancer in front of the API server): the chart's
``apiServer`` and ``cloud.endpoint`` values point there. kubelet runs in the node's network
too, so it probes those pods on the node's loopback, where the chart's probes look.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from build_image import DEFAULT_REF, build
from clusterbox import NAMESPACE, ClusterBox, NodeSpec, wait_for
from localcluster import BIN, CACHE

CHART = Path(__file__).resolve().parent.parent / "charts" / "eniway"
RELEASE = "eniway"
BIN_DIR, CONF_DIR = Path("/opt/cni/bin"), Path("/etc/cni/net.d")
# the chart's host paths (values.yaml: agent.installCNI, agent.socket, agent.stateDir)
HOST_PATHS = (str(BIN_DIR), str(CONF_DIR), "/opt/eniway", "/run/eniway", "/var/lib/eniway")
# Host-network pods every node runs: the agent's. A node that also runs an operator replica
# then offers one pod fewer than its pod IPs; counting it everywhere would let the scheduler
# put one pod more than its IPs on the nodes without one.
HOST_NETWORK_PODS = 1


@dataclass
class ChartBox(ClusterBox):
    release: str = RELEASE
    namespace: str = NAMESPACE
    image_ref: str = DEFAULT_REF
    image: Path = field(default_factory=Path)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return self.image_ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.image_ref.rsplit(":", 1)[1]

    def _start(self) -> None:
        self.image = build(CACHE / "images", self.image_ref)  # cached by make deps
        super()._start()

    def _wait_nodes(self) -> None:
        """Registered, not Ready: a node is Ready once its CNI conflist is there, which the
        chart's init container writes."""
        for node in self.node_by_name.values():
            wait_for(lambda n=node.name: self.get("node", n), 120, f"node {node.name} registered")

    def _write_config(self, vswitches: list[str], sg: str) -> None:
        """The chart writes the pool configuration (``values()``)."""

    def start_operator(self) -> None:
        """The chart's Deployment runs the operator."""

    def _start_node(self, spec: NodeSpec, vswitch: str, sg: str) -> None:
        assert self.cloud is not None
        node, inst = self._create_node(spec, vswitch, sg)
        cloud_port = int(self.cloud.endpoint.rsplit(":", 1)[1])
        node.real = self._real_node(
            node, inst, BIN_DIR, CONF_DIR, host_network_pods=HOST_NETWORK_PODS,
            host_paths=HOST_PATHS, images=(self.image,),
            loopback_ports=(self.kube.ports["apiserver"], cloud_port), kubelet_in_node=True)
        node.real.start()
        self._started(node)

    # -- helm ----------------------------------------------------------------------------

    def values(self, **overrides: Any) -> dict[str, Any]:
        """The chart's values for this box: its image, its cluster id, the emulator as the
        cloud and the apiserver, both on the nodes' loopback; the pool settings."""
        assert self.cloud is not None
        topo = self.topology
        pool = self.pool_settings(topo.vswitch_ids(self.zone), topo.security_group_id)
        return {
            "image": {"repository": self.repository, "tag": self.tag, "pullPolicy": "Never"},
            "clusterId": self.cluster_id,
            "apiServer": {"host": "127.0.0.1", "port": self.kube.ports["apiserver"]},
            "cloud": {"provider": "cloudsim", "region": self.region,
                      "endpoint": self.cloud.url},
            "cloudsim": {"deploy": False},
            # The apiserver (on the host) cannot reach the operator replicas in the nodes'
            # networks: the exclusive-ENI webhook would only add its timeout to every pod.
            "admissionWebhook": {"enabled": False},
            "pool": pool,
            **overrides,
        }

    def helm(self, *args: str, timeout: float = 600) -> str:
        res = subprocess.run([str(BIN / "helm"), *args, f"--kubeconfig={self.kube.kubeconfig}"],
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode:
            raise RuntimeError(f"helm {' '.join(args)}: {res.stdout}{res.stderr}")
        return res.stdout

    def install(self, **overrides: Any) -> str:
        values = self.workdir / "values.json"
        values.write_text(json.dumps(self.values(**overrides), indent=2))
        return self.helm("install", self.release, str(CHART), "-n", self.namespace,
                         "--create-namespace", f"--values={values}")

    def upgrade(self, *args: str) -> str:
        return self.helm("upgrade", self.release, str(CHART), "-n", self.namespace,
                         "--reuse-values", *args)

    def uninstall(self, *args: str) -> str:
        return self.helm("uninstall", self.release, "-n", self.namespace, *args)

    def tag_image(self, tag: str) -> str:
        """The image under another tag on every node (what a new release pushes)."""
        ref = f"{self.repository}:{tag}"
        for node in self.node_by_name.values():
            assert node.real is not None
            res = node.real.ctr("images", "tag", "--force", self.image_ref, ref)
            if res.returncode:
                raise RuntimeError(f"ctr images tag on {node.name}: {res.stderr.strip()}")
        return ref

    # -- queries -------------------------------------------------------------------------

    def component(self, name: str) -> list[dict[str, Any]]:
        """The chart's pods of one component (operator, agent, uninstall)."""
        items: list[dict[str, Any]] = self.get(
            "pods", "-n", self.namespace, "-l",
            f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={name}",
        )["items"]
        return items


def image_sizes(archive: Path) -> tuple[int, int]:
    """The docker-archive's size in bytes, and its layers' unpacked contents (the sum of
    their regular files' sizes)."""
    unpacked = 0
    with tarfile.open(archive) as outer:
        manifest = json.loads(outer.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for name in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(name)) as layer:
                unpacked += sum(m.size for m in layer if m.isfile())
    return archive.stat().st_size, unpacked
