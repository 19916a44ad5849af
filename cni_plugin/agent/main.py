"""eniway-agent: the per-node daemon behind the CNI shim.

    eniway-agent --node-name NODE ...     the daemon
    eniway-agent debug [-o json]          the running agent's pool, ENIs, releases, errors

Runs one per node (DaemonSet, hostNetwork). ``--netns NAME`` makes a named network
namespace play the node's host network while this process stays where it is (so
several agents, one per emulated node, share one machine and reach the API server
on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from cni_plugin import contract
from cni_plugin.agent.core import AgentConfig, NodeAgent
from cni_plugin.agent.datapath import Datapath
from cni_plugin.agent.exclusive_pods import DEFAULT_WAIT, ExclusivePods
from cni_plugin.agent.identity import ALIYUN, AWS, InstanceView, MetadataClient, MetadataError
from cni_plugin.agent.kube import Kube, load_kubeconfig
from cni_plugin.agent.kubesync import KubeSync
from cni_plugin.agent.metrics import Metrics, serve
from cni_plugin.agent.server import ShimServer
from cni_plugin.agent.store import StoreLocked

log = logging.getLogger("eniway.agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eniway-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this node's name (default $NODE_NAME)")
    p.add_argument("--kubeconfig", default=None,
                   help="kubeconfig (default $KUBECONFIG, else in-cluster)")
    p.add_argument("--socket", default=contract.DEFAULT_SOCKET,
                   help="unix socket for the CNI shim (default %(default)s)")
    p.add_argument("--state-dir", default=contract.DEFAULT_STATE_DIR,
                   help="allocation store (default %(default)s)")
    p.add_argument("--netns", default=None, metavar="NAME",
                   help="manage a node whose host network is this named netns (default: none, "
                        "this process's own network)")
    p.add_argument("--mtu", type=int, default=None,
                   help="pod MTU (default: the ENI's spec.mtu, else 1500)")
    p.add_argument("--cooldown", type=float, default=30.0,
                   help="seconds a released IP rests before reuse (default %(default)s)")
    p.add_argument("--gc-interval", type=float, default=60.0,
                   help="seconds between GC/repair passes (default %(default)s)")
    p.add_argument("--gc-grace", type=float, default=120.0,
                   help="minimum age of an allocation before GC may reclaim it "
                        "(default %(default)s)")
    p.add_argument("--heartbeat-interval", type=float, default=30.0,
                   help="seconds between status.agent heartbeats (default %(default)s)")
    p.add_argument("--resync-interval", type=float, default=30.0,
                   help="seconds between ENI link/table re-checks (default %(default)s)")
    p.add_argument("--metrics-addr", default="127.0.0.1:9901",
                   help="host:port for /metrics, /healthz, /readyz ('' to disable; "
                        "default %(default)s)")
    p.add_argument("--store-fsync", action="store_true",
                   help="fsync every allocation record (only matters for power loss, which "
                        "also ends every pod; docs/node.md)")
    p.add_argument("--exclusive-wait", type=float, default=DEFAULT_WAIT,
                   help="seconds ADD of an exclusive-ENI pod waits for its ENI to be attached "
                        "here before answering 'try again later' (CNI code 11; kubelet "
                        "retries) (default %(default)s)")
    p.add_argument("--workers", type=int, default=16,
                   help="CNI request worker threads (default %(default)s)")
    p.add_argument("--metadata-url", default=os.environ.get("ENIWAY_METADATA_URL", ""),
                   metavar="URL",
                   help="the instance metadata service ($ENIWAY_METADATA_URL; on ECS "
                        "http://100.100.100.200, on EC2 http://169.254.169.254): when set, "
                        "an ENI is served only if the metadata lists its MAC with its id "
                        "on this instance (default: off)")
    p.add_argument("--cloud", default=os.environ.get("ENIWAY_CLOUD_PROVIDER", "aliyun"),
                   choices=["aliyun", "cloudsim", "aws"],
                   help="the metadata layout: Alibaba's, or EC2's IMDSv2 "
                        "($ENIWAY_CLOUD_PROVIDER; cloudsim means aliyun; default "
                        "%(default)s)")
    p.add_argument("--log-level", default=os.environ.get("ENIWAY_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR (default $ENIWAY_LOG_LEVEL, else INFO)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name (or $NODE_NAME) is required")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["debug"]:  # eniway-agent debug: a client of the running agent
        from cni_plugin.agent import debugcli
        return debugcli.main(argv[1:])
    args = parse_args(argv)
    # Hand the GIL over sooner: a CNI request waiting behind an API write or a GC pass
    # gets the interpreter within 1 ms instead of 5.
    sys.setswitchinterval(0.001)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = AgentConfig(
        node_name=args.node_name, state_dir=args.state_dir, socket_path=args.socket,
        host_netns=args.netns, mtu=args.mtu, cooldown=args.cooldown,
        gc_interval=args.gc_interval, gc_grace=args.gc_grace,
        heartbeat_interval=args.heartbeat_interval, resync_interval=args.resync_interval,
        store_fsync=args.store_fsync)
    if args.netns and not os.path.exists(f"/run/netns/{args.netns}"):
        print(f"eniway-agent: netns {args.netns!r} does not exist (/run/netns/{args.netns})",
              file=sys.stderr)
        return 2
    metrics = Metrics()
    agent = NodeAgent(cfg, Datapath(args.netns), metrics)
    if args.metadata_url:
        agent.instance = InstanceView(MetadataClient(
            args.metadata_url, AWS if args.cloud == "aws" else ALIYUN))
        try:
            ident = agent.instance.refresh()
            log.info("instance %s in %s, %d interfaces", ident.instance_id, ident.zone,
                     len(ident.interfaces))
        except MetadataError as e:  # read again when an ENI needs it
            log.warning("instance metadata: %s", e)
    try:
        agent.start()
    except StoreLocked as e:
        print(f"eniway-agent: {e}", file=sys.stderr)
        return 1
    kube = Kube(load_kubeconfig(args.kubeconfig))
    sync = KubeSync(agent, kube)
    ExclusivePods(agent, args.exclusive_wait, sync.pod_wants_exclusive)
    server = ShimServer(args.socket, agent.handle, args.workers)
    server.bind()
    server.start()
    if args.metrics_addr:
        serve(metrics, args.metrics_addr, healthy=lambda: True, ready=lambda: agent.ready)
    sync.start()
    log.info("eniway-agent for node %s serving %s (state %s, host netns %s)", cfg.node_name,
             args.socket, args.state_dir, args.netns or "current")

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("shutting down")
    sync.stop.set()
    server.close()
    agent.drain()
    agent.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
