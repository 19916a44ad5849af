#!/usr/bin/env python3
"""eniway on the embedded cloud emulator: the whole system on one machine (needs root).

A real control plane, eniway-cloudsim with its VPC network, three nodes of different
instance types (each a network namespace made a real node: containerd, kubelet
v1.20.2 and its eniway-agent), and the operator. Then a Deployment's pods (busybox
containers) get real VPC addresses from eniway, ping and fetch over HTTP across nodes
and ENIs (``kubectl exec``), a hostPort answers through portmap, the Deployment scales
past one ENI's capacity and back, a pod annotated for a public IP is reached from the
emulator's internet at its EIP, and everything is cleaned up.

    make demo            # or: python3 hack/demo.py [--keep | --up] [--cloud aws] [--chart]
    make demo CLOUD=aws  # the same on the emulator's EC2 API (boto3, IMDSv2)
    make demo CHART=1    # eniway installed by `helm install` from its chart: its image
                         # (built offline) in each node's containerd, the operator and the
                         # agents as the chart's pods; `helm uninstall` at the end

Ctrl-C and SIGTERM stop it cleanly at any point. A run killed without its clean-up
(SIGKILL) leaves namespaces and processes behind: the next run removes them first
(hack/boxreaper.py, only those of runs whose process is gone).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chartbox import ChartBox, image_sizes
from clusterbox import ClusterBox, NodeSpec, pod_spec, wait_for

NODES_BY_CLOUD = {
    "aliyun": [
        NodeSpec("node-a", "ecs.g6.large"),  # 2 ENIs x 6 IPs: 5 pod IPs on one secondary ENI
        NodeSpec("node-b", "ecs.c6.xlarge"),  # 3 ENIs x 10 IPs
        NodeSpec("node-c", "ecs.g6.xlarge"),  # 3 ENIs x 10 IPs
    ],
    "aws": [  # EC2 serves pods from the primary ENI too: ENIs x (IPs - 1) + 2 max pods
        NodeSpec("node-a", "t3.small"),  # 3 ENIs x 4 IPs: 9 pod IPs, 3 on the primary ENI
        NodeSpec("node-b", "m5.large"),  # 3 ENIs x 10 IPs
        NodeSpec("node-c", "c5.large"),  # 3 ENIs x 10 IPs
    ],
}
NODES = NODES_BY_CLOUD["aliyun"]
APP = "web"
HOST_PORT = 30080
BIG = 30  # node-a holds 5 pods at most; node-b and node-c then need a second ENI

T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def title(msg: str) -> None:
    print(f"\n=== {msg} ===", flush=True)


def show(box: ClusterBox, *args: str) -> None:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    print(box.kube.kubectl(*args).stdout.rstrip(), flush=True)


def eni_count(box: ClusterBox, node: str) -> int:
    return sum(1 for e in box.enis() if e["spec"]["nodeName"] == node
               and not e["spec"].get("primary") and e.get("status", {}).get("phase") == "InUse")


def pools_warm(box: ClusterBox) -> bool:
    pools = box.pools()
    return len(pools) == len(NODES) and all(
        p.get("status", {}).get("counts", {}).get("free", 0) >= 2 for p in pools.values())


def pools_trimmed(box: ClusterBox, pods: list[dict[str, object]]) -> bool:
    """Each pool holds its pods' IPs plus at most max_pool_size free ones."""
    per_node: dict[str, int] = {}
    for p in pods:
        node = p["spec"]["nodeName"]  # type: ignore[index]
        per_node[node] = per_node.get(node, 0) + 1
    for name, pool in box.pools().items():
        counts = pool.get("status", {}).get("counts", {})
        if counts.get("allocated") != per_node.get(name, 0) or counts.get("free", 99) > 5:
            return False
    return True


def check_traffic(box: ClusterBox, pods: list[dict[str, object]]) -> None:
    by_node: dict[str, list[dict[str, object]]] = {}
    for p in pods:
        by_node.setdefault(p["spec"]["nodeName"], []).append(p)  # type: ignore[index]
    podip_eni = {pi["spec"]["ip"]: pi["spec"]["eniId"] for pi in box.podips()}
    pairs = []
    nodes = sorted(by_node)
    for i, a in enumerate(nodes):
        b = nodes[(i + 1) % len(nodes)]
        pairs.append((by_node[a][0], by_node[b][-1]))
    same = by_node[nodes[0]]
    if len(same) > 1:
        pairs.append((same[0], same[1]))
    ok = 0
    for src, dst in pairs:
        sip = src["status"]["podIP"]  # type: ignore[index]
        dip = dst["status"]["podIP"]  # type: ignore[index]
        good = box.ping(src, dip, count=3)
        ok += good
        say(f"ping {src['spec']['nodeName']}/{sip} ({podip_eni.get(sip, '?')}) -> "  # type: ignore[index]
            f"{dst['spec']['nodeName']}/{dip} ({podip_eni.get(dip, '?')}): "  # type: ignore[index]
            f"{'ok' if good else 'LOST'}")
        body = box.fetch(src, f"http://{dip}:8080/")
        served = body is not None and body.strip() == dst["metadata"]["name"]  # type: ignore[index]
        ok += served
        say(f"http {src['spec']['nodeName']}/{sip} -> {dip}:8080: "  # type: ignore[index]
            f"{'served by ' + body.strip() if served and body else 'FAILED'}")
    if ok != 2 * len(pairs):
        raise SystemExit("pod-to-pod traffic failed")


def check_host_port(box: ClusterBox) -> None:
    """A pod with a hostPort on node-b, fetched at the node's primary address from the
    node's own network and from another node's: portmap's DNAT (chained after eniway)
    answers, and the replies leave through the primary ENI."""
    node = box.node_by_name["node-b"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "hostport", "labels": {"app": "hostport"}},
           "spec": {**pod_spec(host_port=HOST_PORT),
                    "nodeSelector": {"kubernetes.io/hostname": node.name}}}
    box.kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(lambda: box.running_pods("app=hostport"), 120, "hostport pod running")
    for client in (node.name, "node-c"):  # the node itself, and another node's network
        # Running is when the container started, not when its httpd listens: poll a while
        try:
            body = wait_for(lambda c=client: box.node_fetch(
                c, f"http://{node.primary_ip}:{HOST_PORT}/"), 30, "the hostPort")
        except TimeoutError:
            body = None
        say(f"http {client} (host network) -> {node.primary_ip}:{HOST_PORT} (hostPort): "
            f"{'served by ' + body.strip() if body else 'FAILED'}")
        if not body or body.strip() != "hostport":
            raise SystemExit("hostPort did not answer")
    box.kube.kubectl("delete", "pod", "hostport", "--grace-period=0", "--force")


def keep_until_stopped(box: ClusterBox) -> None:
    """Hold the system up until Ctrl-C or SIGTERM (then the clean-up runs)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"\nkubeconfig: {box.kube.kubeconfig}  (Ctrl-C or SIGTERM to stop)", flush=True)
    while not stop.wait(1.0):  # a timed wait: the handlers run in between
        pass
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    say("stop requested")


def check_public_ip(box: ClusterBox) -> None:
    """A pod annotated for a public IP: the operator gives it an EIP in NAT mode; a client
    in the emulator's internet namespace fetches the pod's page at that EIP; deleting the
    pod releases the EIP."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "public", "labels": {"app": "public"},
                        "annotations": {"network.eniway.io/public-ip": "true"}},
           "spec": pod_spec()}
    box.kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(lambda: box.running_pods("app=public"), 120, "public pod running")
    running = time.monotonic()

    def public_ip() -> str | None:
        return next(((pi.get("status") or {}).get("publicIP") for pi in box.podips()
                     if pi["metadata"]["name"] == "public"), None)

    eip = wait_for(public_ip, 120, "the pod's public IP")
    body = wait_for(lambda: box.internet_fetch(f"http://{eip}:8080/"), 120,
                    "the pod reached at its EIP")
    say(f"http internet ({box.internet_netns}) -> {eip}:8080 (EIP): served by "
        f"{body.strip()}, {time.monotonic() - running:.1f}s after the pod was Running")
    show(box, "get", "podips", "public")
    box.kube.kubectl("delete", "pod", "public", "--grace-period=0", "--force")
    assert box.cloud is not None
    wait_for(lambda: not [e for e in box.cloud.admin.state()["eips"]  # type: ignore[union-attr]
                          if e["ip"] == eip], 120, "the EIP released")
    say(f"pod deleted: EIP {eip} disassociated and released")


def helm_install(box: ChartBox) -> None:
    """The chart installed on the nodes; its pods up."""
    tarball, unpacked = image_sizes(box.image)
    say(f"image {box.image_ref} (built offline, imported into each node's containerd): "
        f"{tarball / 1e6:.0f} MB archive, {unpacked / 1e6:.0f} MB unpacked")
    t0 = time.monotonic()
    print(f"$ helm install {box.release} charts/eniway -n {box.namespace} --create-namespace "
          f"--values {box.workdir / 'values.json'}", flush=True)
    box.install()
    n = len(NODES)
    wait_for(lambda: sum(p["status"].get("phase") == "Running"
                         for p in box.component("agent")) == n, 180, "an agent on each node")
    say(f"the chart's agents Running on {n} nodes {time.monotonic() - t0:.1f}s after helm "
        "install (their init container installed the CNI binary and conflist)")
    show(box, "get", "pods", "-n", box.namespace, "-o", "wide")


def helm_uninstall(box: ChartBox) -> None:
    print(f"$ helm uninstall {box.release} -n {box.namespace}", flush=True)
    t0 = time.monotonic()
    box.uninstall("--timeout=5m")
    assert box.cloud is not None
    left = box.cloud.provider().describe_enis(tags={"eniway.io/cluster": box.cluster_id})
    say(f"uninstalled in {time.monotonic() - t0:.1f}s (its hook detached and deleted the "
        f"ENIs): {len(left)} ENIs of the cluster left in the cloud")
    show(box, "get", "enis,enipools")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="after the walkthrough, keep the system up until Ctrl-C or SIGTERM")
    parser.add_argument("--up", action="store_true",
                        help="start the system, skip the walkthrough, keep it up until Ctrl-C "
                             "or SIGTERM")
    parser.add_argument("--cloud", choices=sorted(NODES_BY_CLOUD), default="aliyun",
                        help="the emulator's API the operator and agents use: aliyun (ECS "
                             "and VPC through Alibaba's SDK) or aws (EC2 through boto3, "
                             "IMDSv2)")
    parser.add_argument("--chart", action="store_true",
                        help="install eniway with helm install from charts/eniway (its image "
                             "built offline and imported into each node's containerd) "
                             "instead of running it as processes; helm uninstall at the end")
    args = parser.parse_args()
    if args.chart and args.cloud != "aliyun":
        parser.error("--chart runs on the emulator's ECS API (cloud.provider cloudsim)")
    global NODES
    NODES = NODES_BY_CLOUD[args.cloud]
    if os.geteuid() != 0:
        print("the demo builds network namespaces: run it as root", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    title(f"Starting eniway on the embedded cloud emulator ({args.cloud})")
    box = (ChartBox if args.chart else ClusterBox)(
        NODES, log=say, cloud_name=args.cloud, pool_config={
            "min_pool_size": 2, "max_pool_size": 5, "ip_cooldown": "5s",
            "empty_eni_reclaim_after": "10s"})
    try:
        box.start()
        if isinstance(box, ChartBox):
            title("helm install on the nodes")
            helm_install(box)
        say("waiting for the operator to warm every node's pool")
        wait_for(lambda: pools_warm(box), 180, "warm pools")
        say("pools are warm")
        show(box, "get", "enis,enipools")
        if args.up:
            keep_until_stopped(box)
            return 0

        title(f"Deployment {APP}: 6 pods spread over 3 nodes")
        box.deployment(APP, 6)
        pods = box.wait_running(APP, 6)
        say("6 pods running with VPC addresses")
        show(box, "get", "podips", "-A", "-o", "wide")

        title("Pod-to-pod traffic across nodes and ENIs (real packets, VPC source check on)")
        check_traffic(box, pods)

        title(f"hostPort {HOST_PORT} through portmap (chained after eniway)")
        check_host_port(box)
        if box.aws:
            say("public IPs (EIPs) are not yet served on EC2: see docs/clouds.md")
        else:
            title("A public IP (EIP, NAT mode) for a pod, reached from the internet")
            check_public_ip(box)

        title(f"Scale to {BIG}: more pods than one ENI holds on node-b and node-c")
        before = {n.name: eni_count(box, n.name) for n in NODES}
        box.scale(APP, BIG)
        pods = box.wait_running(APP, BIG, 300)
        after = {n.name: eni_count(box, n.name) for n in NODES}
        say(f"secondary ENIs in use per node: before {before}, after {after}")
        show(box, "get", "enis,enipools")
        check_traffic(box, pods)

        title("Scale back to 3: IPs go back to the cloud through the release handshake")
        box.scale(APP, 3)
        pods = box.wait_running(APP, 3)
        say("waiting for the pools to shrink to max_pool_size and released ENIs to go")
        wait_for(lambda: pools_trimmed(box, pods), 240, "pools trimmed to max_pool_size")
        wait_for(lambda: sum(eni_count(box, n.name) for n in NODES) < sum(after.values())
                 and all(e.get("status", {}).get("phase") == "InUse" for e in box.enis()),
                 120, "released ENIs detached and deleted")
        show(box, "get", "enis,enipools")
        calls = box.cloud.admin.call_counts() if box.cloud else {}
        say(f"cloud API calls in the whole demo: {calls.get('total')} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(calls.get('calls', {}).items()))})")

        if args.keep:
            keep_until_stopped(box)
        title("Cleaning up")
        box.kube.kubectl("delete", "deployment", APP)
        wait_for(lambda: not box.pods(f"app={APP}"), 120, "pods gone")
        if isinstance(box, ChartBox):
            title("helm uninstall")
            helm_uninstall(box)
        say("demo finished")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM: let the clean-up end
        box.stop()
        say("everything stopped and removed")


if __name__ == "__main__":
    sys.exit(main())
