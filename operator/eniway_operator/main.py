"""eniway-operator: command line, wiring, leader election, then kopf.

    eniway-operator --kubeconfig K --cluster-id C --cloud-endpoint 127.0.0.1:P --region R
    eniway-operator uninstall --help     remove eniway's ENIs and objects (before helm uninstall)
    eniway-operator max-pods TYPE...     pods a node of each instance type can hold (--max-pods)

Flags default from the environment the Helm chart sets (ENIWAY_CLUSTER_ID,
ENIWAY_CONFIGMAP, ENIWAY_CLOUD_*, ALIBABA_CLOUD_ACCESS_KEY_*, POD_NAMESPACE). With
--cloud aws, credentials come from boto3's chain (AWS_*, IRSA, the instance profile).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cni_plugin import contract
from eniway_operator import kube as kube_mod
from eniway_operator.cloud.aliyun import AliyunProvider
from eniway_operator.cloud.aws import AwsProvider
from eniway_operator.cloud.credentials import (
    DEFAULT_METADATA_URL,
    ENV_ID,
    ENV_SECRET,
    ENV_TOKEN,
    Credentials,
    CredentialsError,
    RamRoleCredentials,
    SecretFileCredentials,
    StaticCredentials,
)
from eniway_operator.cloud.limits import parse_override
from eniway_operator.cloud.ratelimit import parse_rates
from eniway_operator.eip_controller import PublicIps
from eniway_operator.exclusive_reconcile import ExclusiveReconciler
from eniway_operator.gc import GarbageCollector
from eniway_operator.leader import LeaseElector
from eniway_operator.metrics import LEADER, Health, MeteredProvider, count_attempt, serve
from eniway_operator.objects import ObjectCache
from eniway_operator.reconcile import Reconciler, Settings
from eniway_operator.scheduler import Scheduler

if TYPE_CHECKING:
    from eniway_operator.webhook import AdmissionWebhook

log = logging.getLogger("eniway_operator")
T = TypeVar("T")
CLOUDS = ["aliyun", "cloudsim", "aws"]
ALIYUN_REGION = "cn-hangzhou"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter,
                     argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default after its help (unless
    the help says it, for a default that depends on other flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "(default:" in text else super()._get_help_string(action)


def _json_flag(p: argparse.ArgumentParser, flag: str, text: str,
               parse: Callable[[Mapping[str, object]], T]) -> T | None:
    """A JSON mapping from a flag or its environment variable, or a usage error."""
    if not text.strip():
        return None
    try:
        spec = json.loads(text)
        if not isinstance(spec, dict):
            raise ValueError(f"want a JSON object, got {type(spec).__name__}")
        return parse(spec)
    except (ValueError, TypeError, KeyError) as e:
        p.error(f"{flag}: {e}")


def build_parser() -> argparse.ArgumentParser:
    """Every flag with its default (environment variables read now)."""
    p = argparse.ArgumentParser(prog="eniway-operator", description=__doc__,
                                formatter_class=_HelpFormatter)
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG") or None,
                   help="kubeconfig file ($KUBECONFIG; none: in-cluster, then ~/.kube/config)")
    p.add_argument("--namespace", default=_env("POD_NAMESPACE", "kube-system"),
                   help="namespace of the config map and the leader Lease ($POD_NAMESPACE)")
    p.add_argument("--configmap", "--config-map", dest="configmap",
                   default=_env("ENIWAY_CONFIGMAP", "eniway-config"),
                   help="global pool configuration ConfigMap, key config.yaml or config.json "
                        "($ENIWAY_CONFIGMAP)")
    p.add_argument("--cluster-id", default=_env("ENIWAY_CLUSTER_ID"),
                   help="required ($ENIWAY_CLUSTER_ID): tags every cloud object eniway "
                        "creates; GC only touches these")
    p.add_argument("--cloud", default=_env("ENIWAY_CLOUD_PROVIDER", "aliyun"),
                   choices=CLOUDS,
                   help="aliyun: Alibaba Cloud ECS; cloudsim: the aliyun SDK on the emulator; "
                        "aws: Amazon EC2 through boto3 ($ENIWAY_CLOUD_PROVIDER)")
    p.add_argument("--cloud-endpoint", default=_env("ENIWAY_CLOUD_ENDPOINT"),
                   help="ECS or EC2 API endpoint, host:port or URL ($ENIWAY_CLOUD_ENDPOINT; "
                        "empty: the region's)")
    p.add_argument("--region", default=_env("ENIWAY_CLOUD_REGION"),
                   help=f"region id ($ENIWAY_CLOUD_REGION) (default: {ALIYUN_REGION}) with "
                        "aliyun and cloudsim; with aws, boto3's (AWS_REGION, "
                        "AWS_DEFAULT_REGION or the profile's)")
    p.add_argument("--access-key-id", default=_env(ENV_ID),
                   help=f"AccessKey id (${ENV_ID})")
    p.add_argument("--access-key-secret-file", default="",
                   help=f"file holding the AccessKey secret (else ${ENV_SECRET}); "
                        f"${ENV_TOKEN} is sent with them (STS keys)")
    p.add_argument("--credentials-dir", default=_env("ENIWAY_CLOUD_CREDENTIALS_DIR"),
                   help="a mounted Secret with files access-key-id, access-key-secret "
                        "(and security-token), re-read when they change "
                        "($ENIWAY_CLOUD_CREDENTIALS_DIR; used when no AccessKey is given)")
    p.add_argument("--metadata-url", default=_env("ENIWAY_METADATA_URL", DEFAULT_METADATA_URL),
                   help="instance metadata service for RAM role credentials, the last "
                        "source ($ENIWAY_METADATA_URL)")
    p.add_argument("--rate-limits", default=_env("ENIWAY_CLOUD_RATE_LIMITS"),
                   help='per-API rates over the defaults, JSON: {"AssignPrivateIpAddresses": '
                        '"600/min", "DescribeNetworkInterfaces": {"perMinute": 1200, '
                        '"burst": 20}} ($ENIWAY_CLOUD_RATE_LIMITS)')
    p.add_argument("--limits-override", default=_env("ENIWAY_CLOUD_LIMITS_OVERRIDE"),
                   help='instance-type limits that win over the API, JSON: {"ecs.g6.large": '
                        '{"enis": 3, "ipsPerENI": 6, "hotSwap": true}} '
                        "($ENIWAY_CLOUD_LIMITS_OVERRIDE)")
    p.add_argument("--limits-ttl", type=float, default=3600.0,
                   help="seconds an instance type's limits from the API are cached")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds a cloud call may wait for its answer")
    p.add_argument("--connect-timeout", type=float, default=5.0,
                   help="seconds a cloud call may wait to connect")
    p.add_argument("--metrics-port", type=int, default=9464, help="/metrics, /healthz, /readyz")
    p.add_argument("--health-port", type=int, default=0,
                   help="a second port serving the same endpoints (0: none)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address both ports listen on")
    p.add_argument("--workers", type=int, default=32,
                   help="nodes reconciled in parallel (rounds mostly wait: on the API server, "
                        "batched describes and rate limits)")
    p.add_argument("--resync", type=float, default=300.0,
                   help="full cloud describe of a node at least this often (s)")
    p.add_argument("--gc-interval", type=float, default=60.0,
                   help="seconds between garbage-collection passes")
    p.add_argument("--gc-grace", type=float, default=300.0,
                   help="an untracked Available ENI is deleted after this long (two passes)")
    p.add_argument("--public-ip-interval", type=float, default=5.0,
                   help=f"seconds between public-IP rounds (pods annotated "
                        f"{contract.ANNOTATION_PUBLIC_IP}); 0 turns public IPs off")
    p.add_argument("--exclusive-interval", type=float, default=10.0,
                   help="seconds between exclusive-ENI rounds when nothing is on its way "
                        "(pods requesting network.eniway.io/eni; every 0.5 s while ENIs "
                        "attach or detach); 0 turns exclusive ENIs off")
    p.add_argument("--webhook-port", type=int, default=0,
                   help="HTTPS port of the admission webhook that opts pods in to exclusive "
                        "ENIs (0: no webhook); every replica serves it")
    p.add_argument("--webhook-host", default="0.0.0.0",
                   help="address the admission webhook listens on")
    p.add_argument("--webhook-names", default="localhost,127.0.0.1",
                   help="comma-separated DNS names and IP addresses of the webhook's "
                        "certificate (the Service's name, e.g. eniway-webhook.NS.svc)")
    p.add_argument("--webhook-config", default="",
                   help="MutatingWebhookConfiguration whose caBundle this replica keeps "
                        "trusting its CA (empty: none)")
    p.add_argument("--debounce", type=float, default=0.3,
                   help="pod events are gathered this long before a round (batching)")
    p.add_argument("--agent-timeout", type=float, default=90.0,
                   help="an agent's release acknowledgements count only while its heartbeat "
                        "changed within this many seconds (the agent beats every 30)")
    p.add_argument("--identity", default=f"{socket.gethostname()}-{os.getpid()}",
                   help="this replica's name in the leader Lease")
    p.add_argument("--lease-name", "--peering", dest="lease_name", default="eniway-operator",
                   help="leader Lease name (one replica acts)")
    p.add_argument("--lease-duration", type=float, default=15.0,
                   help="seconds a leader that stopped renewing keeps the Lease")
    p.add_argument("--standalone", action="store_true",
                   help="no leader election (a single replica)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def parse_args(argv: Sequence[str] | None = None,
               p: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``p``: build_parser() with a command's own flags added (eniway-operator uninstall)."""
    p = p or build_parser()
    args = p.parse_args(argv)
    if not args.cluster_id:
        p.error("--cluster-id (or $ENIWAY_CLUSTER_ID) is required: it scopes every cloud tag")
    if not 0 <= args.webhook_port <= 65535:
        p.error("--webhook-port must be 0 to 65535")
    for flag in ("limits_ttl", "read_timeout", "connect_timeout", "agent_timeout"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be > 0")
    args.rates = _json_flag(p, "--rate-limits", args.rate_limits, parse_rates)
    args.limits = _json_flag(p, "--limits-override", args.limits_override, parse_override)
    resolve_region(p, args)
    if args.cloud == "aws":
        given = [f for f in ("access_key_id", "access_key_secret_file", "credentials_dir")
                 if getattr(args, f)]
        if given:
            p.error(f"--{given[0].replace('_', '-')} is an Alibaba Cloud AccessKey: with "
                    "--cloud aws, credentials come from boto3's chain (AWS_* environment, "
                    "shared files, web identity / IRSA, the instance profile)")
    return args


def resolve_region(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An empty --region: ECS's default region, or with aws the region boto3 finds
    (AWS_REGION, AWS_DEFAULT_REGION, the profile's); none is a usage error."""
    if args.region:
        return
    if args.cloud != "aws":
        args.region = ALIYUN_REGION
        return
    import boto3

    args.region = boto3.session.Session().region_name or ""
    if not args.region:
        p.error("--cloud aws needs a region: --region, $ENIWAY_CLOUD_REGION or $AWS_REGION")


def settings_from(args: argparse.Namespace) -> Settings:
    """The reconciler's settings the command line sets."""
    return Settings(cluster_id=args.cluster_id, config_namespace=args.namespace,
                    config_name=args.configmap, resync=args.resync,
                    agent_timeout=args.agent_timeout)


def credentials(args: argparse.Namespace) -> Credentials:
    """An AccessKey given by flag, file or environment (with the environment's STS token,
    if any); else the mounted Secret of ``--credentials-dir`` (an error if it has no
    key); else the instance's RAM role."""
    secret = _env(ENV_SECRET)
    if args.access_key_secret_file:
        secret = Path(args.access_key_secret_file).read_text().strip()
    if args.access_key_id and secret:
        return StaticCredentials(args.access_key_id, secret, _env(ENV_TOKEN))
    if args.credentials_dir:
        return SecretFileCredentials(args.credentials_dir)
    return RamRoleCredentials(args.metadata_url)


def make_provider(args: argparse.Namespace,
                  fence: Callable[[str], None] | None = None) -> AliyunProvider | AwsProvider:
    """``fence`` is asked right before every attempt of every call (leadership)."""
    kw: dict[str, object] = {"fence": fence, "on_attempt": count_attempt}
    if args.cloud == "aws":
        return AwsProvider(region_id=args.region, endpoint=args.cloud_endpoint,
                           rates=args.rates, limits_override=args.limits,
                           limits_ttl=args.limits_ttl, read_timeout=args.read_timeout,
                           connect_timeout=args.connect_timeout, fence=fence,
                           on_attempt=count_attempt)
    endpoint = args.cloud_endpoint
    if endpoint:
        protocol = "https" if endpoint.startswith("https://") else "http" if (
            endpoint.startswith("http://") or args.cloud == "cloudsim") else "https"
        kw["endpoint"] = endpoint.split("://", 1)[-1]
        kw["protocol"] = protocol
    return AliyunProvider(region_id=args.region, credentials=credentials(args),
                          rates=args.rates, limits_override=args.limits,
                          limits_ttl=args.limits_ttl, read_timeout=args.read_timeout,
                          connect_timeout=args.connect_timeout, **kw)  # type: ignore[arg-type]


def start_webhook(args: argparse.Namespace) -> AdmissionWebhook | None:
    """The admission webhook (with --webhook-port), serving before the leader election:
    standby replicas answer too."""
    if not args.webhook_port:
        return None
    from eniway_operator.webhook import AdmissionWebhook
    from eniway_operator.webhook_tls import make_serving_tls

    tls = make_serving_tls(args.webhook_names.split(","))
    return AdmissionWebhook(kube_mod.load_config(args.kubeconfig), args.webhook_host,
                            args.webhook_port, tls, {"kube-system", args.namespace},
                            args.webhook_config).start()


COMMANDS = {
    "uninstall": "eniway_operator.uninstall",
    "max-pods": "eniway_operator.maxpods",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        import importlib

        command: Any = importlib.import_module(COMMANDS[argv[0]])
        return int(command.main(argv[1:]))
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        provider = make_provider(args)
    except (CredentialsError, OSError) as e:
        print(f"eniway-operator: cloud credentials: {e}", file=sys.stderr)
        return 2
    for noisy in ("kubernetes.client.rest", "urllib3", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's login reads it too
    api = kube_mod.count_requests(kube_mod.load_config(
        args.kubeconfig, connections=args.workers + 8))  # rounds, kopf, the lease
    kube = kube_mod.Kube(api, args.namespace, cache=ObjectCache())
    health = Health()
    serve(args.metrics_port, health, args.metrics_host)
    if args.health_port and args.health_port != args.metrics_port:
        serve(args.health_port, health, args.metrics_host)

    try:
        webhook = start_webhook(args)
    except (OSError, ValueError) as e:
        print(f"eniway-operator: admission webhook: {e}", file=sys.stderr)
        return 2
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
    provider.fence = fence  # made before the election, so a bad setting fails at once
    cloud = MeteredProvider(provider)
    settings = settings_from(args)
    reconciler = Reconciler(kube, cloud, settings)
    public_ips = None
    if args.public_ip_interval > 0:
        public_ips = PublicIps(kube, cloud, args.cluster_id)
        reconciler.public_ips_held = public_ips.held_ips

    import kopf

    from eniway_operator import handlers
    from eniway_operator.handlers import Runtime, demand_of

    def not_leader() -> None:
        lost_lease.set()
        stop.set()

    scheduler = Scheduler(reconciler, demand_of, health, workers=args.workers,
                          on_not_leader=not_leader)
    exclusive = (ExclusiveReconciler(kube, cloud, args.cluster_id)
                 if args.exclusive_interval > 0 else None)
    handlers.RUNTIME = Runtime(scheduler=scheduler, reconciler=reconciler, api=api,
                               gc=GarbageCollector(kube, cloud, args.cluster_id, args.gc_grace),
                               gc_interval=args.gc_interval, debounce=args.debounce,
                               public_ips=public_ips,
                               public_ip_interval=args.public_ip_interval,
                               exclusive=exclusive,
                               exclusive_interval=args.exclusive_interval)
    health.ready = True
    try:
        kopf.run(clusterwide=True, standalone=True, stop_flag=stop)
    finally:
        if elector is not None:
            elector.release()
        if webhook is not None:
            webhook.stop()
        LEADER.set(0)
    if lost_lease.is_set():
        log.error("stopped: leadership lost")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
