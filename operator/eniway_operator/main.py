"""eniway-operator: command line, wiring, leader election, then kopf.

    eniway-operator --kubeconfig K --cluster-id C --cloud-endpoint 127.0.0.1:P --region R

Flags default from the environment the Helm chart sets (ENIWAY_CLUSTER_ID,
ENIWAY_CONFIGMAP, ENIWAY_CLOUD_*, ALIBABA_CLOUD_ACCESS_KEY_*, POD_NAMESPACE).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from eniway_operator import kube as kube_mod
from eniway_operator.cloud.base import CloudProvider
from eniway_operator.gc import GarbageCollector
from eniway_operator.leader import LeaseElector
from eniway_operator.metrics import LEADER, Health, MeteredProvider, serve
from eniway_operator.reconcile import Reconciler, Settings
from eniway_operator.scheduler import Scheduler

log = logging.getLogger("eniway_operator")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eniway-operator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG") or None,
                   help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    p.add_argument("--namespace", default=_env("POD_NAMESPACE", "kube-system"),
                   help="namespace of the config map and the leader Lease")
    p.add_argument("--configmap", "--config-map", dest="configmap",
                   default=_env("ENIWAY_CONFIGMAP", "eniway-config"),
                   help="global pool configuration ConfigMap (key config.yaml or config.json)")
    p.add_argument("--config-dir", default="", help="accepted for the chart; unused (the "
                   "ConfigMap is read through the API so changes apply without a restart)")
    p.add_argument("--cluster-id", default=_env("ENIWAY_CLUSTER_ID"),
                   help="tags every cloud object eniway creates; GC only touches these")
    p.add_argument("--cloud", default=_env("ENIWAY_CLOUD_PROVIDER", "aliyun"),
                   choices=["aliyun", "cloudsim"], help="cloudsim = aliyun SDK on the emulator")
    p.add_argument("--cloud-endpoint", default=_env("ENIWAY_CLOUD_ENDPOINT"),
                   help="ECS API endpoint (host:port or URL; default: the region's)")
    p.add_argument("--region", default=_env("ENIWAY_CLOUD_REGION", "cn-hangzhou"))
    p.add_argument("--access-key-id", default=_env("ALIBABA_CLOUD_ACCESS_KEY_ID"))
    p.add_argument("--access-key-secret-file", default="",
                   help="file holding the AccessKey secret (else $ALIBABA_CLOUD_ACCESS_KEY_SECRET)")
    p.add_argument("--metrics-port", type=int, default=9464, help="/metrics, /healthz, /readyz")
    p.add_argument("--health-port", type=int, default=0,
                   help="a second port serving the same endpoints (0: none)")
    p.add_argument("--metrics-host", default="0.0.0.0")
    p.add_argument("--workers", type=int, default=8, help="nodes reconciled in parallel")
    p.add_argument("--resync", type=float, default=300.0,
                   help="full cloud describe of a node at least this often (s)")
    p.add_argument("--gc-interval", type=float, default=60.0)
    p.add_argument("--gc-grace", type=float, default=300.0,
                   help="an untracked Available ENI is deleted after this long (two passes)")
    p.add_argument("--debounce", type=float, default=0.3,
                   help="pod events are gathered this long before a round (batching)")
    p.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}")
    p.add_argument("--lease-name", "--peering", dest="lease_name", default="eniway-operator",
                   help="leader Lease name (one replica acts)")
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--standalone", action="store_true",
                   help="no leader election (a single replica)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if not args.cluster_id:
        p.error("--cluster-id (or $ENIWAY_CLUSTER_ID) is required: it scopes every cloud tag")
    return args


def make_provider(args: argparse.Namespace,
                  fence: Callable[[str], None] | None = None) -> CloudProvider:
    """``fence`` is asked right before every attempt of every call (leadership)."""
    from eniway_operator.cloud.aliyun import AliyunProvider
    from eniway_operator.cloud.credentials import StaticCredentials

    secret = _env("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
    if args.access_key_secret_file:
        secret = Path(args.access_key_secret_file).read_text().strip()
    kw: dict[str, object] = {"fence": fence}
    if args.access_key_id and secret:
        kw["credentials"] = StaticCredentials(args.access_key_id, secret)
    endpoint = args.cloud_endpoint
    if endpoint:
        protocol = "https" if endpoint.startswith("https://") else "http" if (
            endpoint.startswith("http://") or args.cloud == "cloudsim") else "https"
        kw["endpoint"] = endpoint.split("://", 1)[-1]
        kw["protocol"] = protocol
    return AliyunProvider(region_id=args.region, **kw)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kubernetes.client.rest", "urllib3", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it too
    api = kube_mod.load_config(args.kubeconfig)
    kube = kube_mod.Kube(api, args.namespace)
    health = Health()
    serve(args.metrics_port, health, args.metrics_host)
    if args.health_port and args.health_port != args.metrics_port:
        serve(args.health_port, health, args.metrics_host)

    stop = threading.Event()
    lost_lease = threading.Event()
    elector: LeaseElector | None = None
    if not args.standalone:
        elector = LeaseElector(api, args.namespace, args.lease_name, args.identity,
                               lease_seconds=args.lease_duration,
                               renew_deadline=args.lease_duration * 2 / 3)
        health.ready = True
        log.info("waiting for the leader lease %s/%s as %s", args.namespace, args.lease_name,
                 args.identity)
        try:
            if not elector.acquire():
                return 0
        except KeyboardInterrupt:
            return 0

        def lost() -> None:
            LEADER.set(0)
            lost_lease.set()
            stop.set()

        elector.on_lost = lost
        elector.keep_renewing()
    health.leader = True
    LEADER.set(1)
    log.info("leading: reconciling nodes (cluster id %s)", args.cluster_id)

    fence = elector.assert_leader if elector else None
    kube.fence = fence  # no write, and no cloud call, once the lease is lost
    cloud = MeteredProvider(make_provider(args, fence))
    settings = Settings(cluster_id=args.cluster_id, config_namespace=args.namespace,
                        config_name=args.configmap, resync=args.resync)
    reconciler = Reconciler(kube, cloud, settings)

    import kopf

    from eniway_operator import handlers
    from eniway_operator.handlers import Runtime, demand_of

    def not_leader() -> None:
        lost_lease.set()
        stop.set()

    scheduler = Scheduler(reconciler, demand_of, health, workers=args.workers,
                          on_not_leader=not_leader)
    handlers.RUNTIME = Runtime(scheduler=scheduler, reconciler=reconciler, api=api,
                               gc=GarbageCollector(kube, cloud, args.cluster_id, args.gc_grace),
                               gc_interval=args.gc_interval, debounce=args.debounce)
    health.ready = True
    try:
        kopf.run(clusterwide=True, standalone=True, stop_flag=stop)
    finally:
        if elector is not None:
            elector.release()
        LEADER.set(0)
    if lost_lease.is_set():
        log.error("stopped: leadership lost")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
