#!/usr/bin/env python3
"""Real-node benchmark: pod create to Running through kubelet and containerd, eniway
against Debian's ptp+host-local on the same nodes, in one run.

Starts the cluster in a box on real nodes (``clusterbox``: containerd, kubelet
v1.20.2, eniway-agent per emulated instance) with pools warm enough for every pod,
then, for each network in turn, creates a Deployment of N busybox pods and records,
from a watch, when each pod was first seen and when it was first seen Running with an
IP. The peer is a ptp+host-local conflist placed in each node's CNI directory ahead of
eniway's (containerd takes the first). Prints p50/p99 and the eniway/peer ratios,
node start to Ready, and the RSS of kubelet, containerd and eniway-agent.

    python3 hack/bench_nodes.py [--nodes 3] [--pods 30]      (root; make deps first)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cloud import pct
from clusterbox import ClusterBox, NodeSpec, wait_for
from realnode import proc_rss_kib

PEER_CONF = "05-ptp.conflist"  # sorts before 10-eniway.conflist: containerd uses it


def watch_startup(box: ClusterBox, app: str, n: int, timeout: float) -> list[float]:
    """Seconds from a pod's first sight to its first sight Running with an IP."""
    from kubernetes import client, config, watch

    core = client.CoreV1Api(config.new_client_from_config(str(box.kube.kubeconfig)))
    seen: dict[str, float] = {}
    running: dict[str, float] = {}
    ready = threading.Event()

    def run() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, "default", label_selector=f"app={app}",
                           timeout_seconds=int(timeout)):
            pod, now = ev["object"], time.monotonic()
            seen.setdefault(pod.metadata.uid, now)
            if pod.status.phase == "Running" and pod.status.pod_ip:
                running.setdefault(pod.metadata.uid, now)
            if len(running) >= n:
                w.stop()
        ready.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)  # the watch is open before the first pod exists
    box.deployment(app, n)
    ready.wait(timeout)
    if len(running) < n:
        raise TimeoutError(f"{len(running)}/{n} pods of {app} Running after {timeout}s")
    return [running[uid] - seen[uid] for uid in running]


def remove(box: ClusterBox, app: str) -> None:
    box.kube.kubectl("delete", "deployment", app, "--wait=false")
    box.kube.kubectl("delete", "pods", "-l", f"app={app}", "--grace-period=0", "--force",
                     check=False)
    wait_for(lambda: not box.pods(f"app={app}"), 180, f"{app} pods gone")
    # every sandbox removed (its DELs done) before the network is switched
    wait_for(lambda: not any(n.real.sandboxes() for n in box.node_by_name.values()
                             if n.real is not None), 180, f"{app} sandboxes removed")


def peer_conflist(i: int, ipam_dir: Path) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": "ptpnet", "plugins": [
        {"type": "ptp", "ipMasq": False, "ipam": {
            "type": "host-local", "subnet": f"10.244.{i}.0/24", "dataDir": str(ipam_dir)}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


def use_peer(box: ClusterBox, on: bool) -> None:
    for i, node in enumerate(box.node_by_name.values()):
        conf = node.dir / "net.d" / PEER_CONF
        if on:
            conf.write_text(json.dumps(peer_conflist(i, node.dir / "ptp-ipam")))
        else:
            conf.unlink(missing_ok=True)
    time.sleep(1.0)  # containerd reloads its CNI directory on change (fsnotify)


def rss(box: ClusterBox) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"kubelet": [], "containerd": [], "eniway-agent": []}
    for node in box.node_by_name.values():
        assert node.real is not None
        for name, kib in node.real.rss_kib().items():
            out[name].append(kib)
        if node.agent is not None and node.agent.poll() is None:
            out["eniway-agent"].append(proc_rss_kib(node.agent.pid))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=1, help="create/delete rounds per network")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, cgroups)", file=sys.stderr)
        return 1
    per_node = -(-args.pods // args.nodes)
    nodes = [NodeSpec(f"bench-{i}", "ecs.c6.xlarge") for i in range(args.nodes)]  # 18 pods
    box = ClusterBox(nodes, pool_config={"min_pool_size": per_node + 1,
                                         "max_pool_size": per_node + 4})
    try:
        box.start()
        ready = [n.real.timings["start_to_ready_s"] for n in box.node_by_name.values()
                 if n.real is not None]
        wait_for(lambda: len(box.pools()) == args.nodes and all(
            p.get("status", {}).get("counts", {}).get("free", 0) >= per_node
            for p in box.pools().values()), 240, "warm pools")
        times: dict[str, list[float]] = {"eniway": [], "ptp+host-local": []}
        mem: dict[str, list[int]] = {}
        for r in range(args.rounds):
            for net in ("eniway", "ptp+host-local"):
                use_peer(box, net != "eniway")
                app = f"b{r}-{'eni' if net == 'eniway' else 'ptp'}"
                times[net] += watch_startup(box, app, args.pods, 300)
                if net == "eniway" and not mem:
                    mem = rss(box)
                remove(box, app)
                if net == "eniway":  # the pool refills before the next round
                    wait_for(lambda: all(p.get("status", {}).get("counts", {}).get(
                        "free", 0) >= per_node for p in box.pools().values()), 240, "warm")
        use_peer(box, False)
    finally:
        box.stop()

    print(f"\nreal nodes: {args.nodes} x ecs.c6.xlarge, kubelet v1.20.2 + containerd, "
          f"{args.pods} pods per run, {args.rounds} run(s) per network, warm pools")
    print(f"{'pod create -> Running':24} {'p50 s':>8} {'p99 s':>8} {'mean s':>8}")
    for net, xs in times.items():
        print(f"{net:24} {pct(xs, 50):8.2f} {pct(xs, 99):8.2f} {statistics.mean(xs):8.2f}")
    eni, peer = times["eniway"], times["ptp+host-local"]
    print(f"ratio eniway/ptp+host-local  p50 {pct(eni, 50) / pct(peer, 50):.2f}x  "
          f"p99 {pct(eni, 99) / pct(peer, 99):.2f}x")
    print(f"node start to Ready: median {statistics.median(ready):.1f} s, "
          f"max {max(ready):.1f} s ({len(ready)} nodes, started one after another)")
    for name, kibs in mem.items():
        if kibs:
            print(f"RSS {name:13} median {statistics.median(kibs) / 1024:.0f} MiB "
                  f"(max {max(kibs) / 1024:.0f} MiB, {args.pods} pods running)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
