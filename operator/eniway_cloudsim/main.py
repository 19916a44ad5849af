"""eniway-cloudsim: an emulator of the Alibaba Cloud ECS ENI API, its instance metadata
service and (with root) its VPC network, for running eniway without a cloud account."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

from . import ec2_api
from .admin import ADMIN_TOKEN_ENV
from .eips import EipSettings
from .engine import Settings
from .faults import Fault, Rate
from .server import CloudSim

EPILOG = """\
Endpoints (one listener):
  /                                ECS RPC (API version 2014-05-26), signed ACS3-HMAC-SHA256:
                                   point alibabacloud_ecs20140526 at --listen with protocol http;
                                   EC2 Query (2016-11-15), signed SigV4 (region --aws-region):
                                   boto3.client("ec2", endpoint_url="http://<listen>")
  /admin/...                       JSON admin API (topology, instances, faults, counters);
                                   needs 'Authorization: Bearer <admin token>'
  /instances/<id>/<token>/latest/  instance metadata, Alibaba layout: the instance's
                                   metadata_url from the admin API (RAM credentials only here)

Example:
  ENIWAY_CLOUDSIM_ADMIN_TOKEN=... eniway-cloudsim --listen 127.0.0.1:8765 \\
      --state /var/lib/eniway/cloudsim.db \\
      --attach-delay 1 --throttle '*=20/40' --fault AssignPrivateIpAddresses=0.1
See docs/cloudsim.md.
"""


def _listen(spec: str) -> tuple[str, int]:
    """HOST:PORT, port 0 to 65535."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: want HOST:PORT with a port from 0 to 65535")
    return host or "127.0.0.1", int(port)


def _cidr(spec: str) -> str:
    """An IPv4 network with room for at least one EIP."""
    try:
        net = ipaddress.IPv4Network(spec, strict=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: not an IPv4 network ({e})") from None
    if net.num_addresses < 4:
        raise argparse.ArgumentTypeError(f"{spec!r}: too small for EIPs (/30 at least)")
    return str(net)


def _throttle(spec: str) -> tuple[str, Rate | None]:
    """API=PER_SECOND[/BURST], or "ec2" (EC2's documented buckets: rate None)."""
    if spec == "ec2":
        return spec, None
    api, _, rate = spec.partition("=")
    per_s, _, burst = rate.partition("/")
    try:
        per_second = float(per_s)
        return api, Rate(per_second, int(burst) if burst else max(1, int(per_second)))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: want API=PER_SECOND[/BURST], e.g. '*=20/40', or ec2") from None


def _fault(spec: str) -> tuple[str, dict[str, Any]]:
    """API=ERROR_RATE[:CODE[:STATUS]] or API={json}"""
    api, sep, rest = spec.partition("=")
    try:
        if not sep or not api:
            raise ValueError("no API=")
        if rest.startswith("{"):
            out: dict[str, Any] = json.loads(rest)
        else:
            rate, _, tail = rest.partition(":")
            code, _, status = tail.partition(":")
            out = {"error_rate": float(rate)}
            if code:
                out["code"] = code
                out["status"] = int(status) if status else 500
        Fault.from_dict(out)
        return api, out
    except (ValueError, TypeError) as e:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: want API=RATE[:CODE[:STATUS]] or API={{json}} ({e})") from None


def _access_key(spec: str) -> tuple[str, str]:
    ak, sep, secret = spec.partition(":")
    if not sep or not ak or not secret:
        raise argparse.ArgumentTypeError(f"{spec!r}: want ID:SECRET")
    return ak, secret


def _state_path(parser: argparse.ArgumentParser, state: str) -> str:
    """The state file's folder is created when missing; a folder that cannot be made
    is a usage error, not a traceback."""
    if state == ":memory:":
        return state
    path = Path(state)
    if path.is_dir():
        parser.error(f"--state {state}: is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--state {state}: cannot create {path.parent}: {e.strerror}")
    if not os.access(path.parent, os.W_OK):
        parser.error(f"--state {state}: {path.parent} is not writable")
    return state


def admin_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """--admin-token-file, else $ENIWAY_CLOUDSIM_ADMIN_TOKEN, else None (one is made up)."""
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            parser.error(f"--admin-token-file {args.admin_token_file}: {e.strerror}")
        if not token:
            parser.error(f"--admin-token-file {args.admin_token_file}: empty")
        return token
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eniway-cloudsim", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:8765", type=_listen,
                   help="HOST:PORT to serve on; port 0 picks a free one (default %(default)s)")
    p.add_argument("--state", default=":memory:",
                   help="SQLite file holding the region's state; survives restarts "
                        "(default: in memory, lost on exit)")
    p.add_argument("--region", default="cn-hangzhou", help="region id (default %(default)s)")
    p.add_argument("--aws-region", default="us-east-1",
                   help="the EC2 dialect's region: SigV4 scope, availability zones "
                        "<region>a... (default %(default)s)")
    p.add_argument("--eni-quota", type=int, default=100,
                   help="secondary ENIs allowed in the region (default %(default)s, as ECS)")
    p.add_argument("--attach-delay", type=float, default=0.5,
                   help="seconds an ENI stays Attaching (default %(default)s)")
    p.add_argument("--detach-delay", type=float, default=0.5,
                   help="seconds an ENI stays Detaching (default %(default)s)")
    p.add_argument("--eip-quota", type=int, default=20,
                   help="EIPs per region (default %(default)s)")
    p.add_argument("--eip-pool", default="198.51.100.0/24", type=_cidr,
                   help="CIDR the EIPs are taken from (default %(default)s)")
    p.add_argument("--eip-delay", type=float, default=0.5,
                   help="seconds an EIP stays Associating / Unassociating "
                        "(default %(default)s)")
    p.add_argument("--access-key", action="append", default=[], metavar="ID:SECRET",
                   type=_access_key,
                   help="accepted AccessKey pair, repeatable (default eniway:eniway-secret)")
    p.add_argument("--admin-token-file", default="", metavar="PATH",
                   help="file holding the token /admin/ requests must send as 'Authorization: "
                        f"Bearer <token>' (default: ${ADMIN_TOKEN_ENV}, else a random one, "
                        "printed by --print-endpoint)")
    p.add_argument("--no-auth", action="store_true",
                   help="accept any signature (the signature is checked by default)")
    p.add_argument("--throttle", action="append", default=[], metavar="API=PER_S[/BURST]",
                   type=_throttle,
                   help="token bucket per API ('*' for every API), answering Throttling when "
                        "empty; 'ec2' sets EC2's documented buckets on the EC2 actions "
                        "(RequestLimitExceeded); repeatable (default: none)")
    p.add_argument("--fault", action="append", default=[], metavar="API=RATE[:CODE[:STATUS]]",
                   type=_fault,
                   help="inject errors on a share of calls ('*' for all); repeatable "
                        "(default: none)")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="added latency on every ECS call (default %(default)s)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for fault injection (default: a random one)")
    p.add_argument("--network", action="store_true",
                   help="build the VPC network with namespaces, veths, routes and nftables "
                        "(needs root)")
    p.add_argument("--netns-prefix", default="csim-",
                   help="prefix of the VPC namespaces in network mode (default %(default)s)")
    p.add_argument("--teardown-on-exit", action="store_true",
                   help="in network mode, delete the namespaces on exit")
    p.add_argument("--print-endpoint", action="store_true",
                   help="print the bound endpoint as JSON on stdout once listening")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return p


def make_sim(args: argparse.Namespace, token: str | None = None) -> CloudSim:
    host, port = args.listen
    network = None
    if args.network:
        from .netmode import NetMode

        network = NetMode(args.netns_prefix)
    keys = dict(args.access_key) if args.access_key else None
    throttle: dict[str, Rate] = {}
    for api, rate in args.throttle:
        if rate is None:
            throttle.update(ec2_api.throttle_preset())
        else:
            throttle[api] = rate
    sim = CloudSim(
        host=host, port=port, state=args.state, admin_token=token,
        settings=Settings(region_id=args.region, eni_quota=args.eni_quota,
                          attach_delay=args.attach_delay, detach_delay=args.detach_delay,
                          aws_region=args.aws_region),
        network=network, keys=keys, auth=not args.no_auth, seed=args.seed,
        throttle=throttle,
        eip_settings=EipSettings(quota=args.eip_quota, pool=args.eip_pool,
                                 associate_delay=args.eip_delay,
                                 unassociate_delay=args.eip_delay))
    faults = dict(args.fault)
    if args.latency_ms:
        faults.setdefault("*", {})["latency_ms"] = args.latency_ms
    if faults:
        sim.gate.set_faults(faults, args.seed)
    return sim


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.state = _state_path(parser, args.state)
    token = admin_token(parser, args)
    try:
        sim = make_sim(args, token)
    except sqlite3.Error as e:
        parser.error(f"--state {args.state}: cannot open it: {e}")
    except OSError as e:  # the port is taken, or the address is not ours
        parser.error(f"--listen {args.listen[0]}:{args.listen[1]}: {e.strerror}")

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    if args.print_endpoint:
        print(json.dumps({"endpoint": sim.endpoint, "url": sim.url,
                          "admin_token": sim.admin_token}), flush=True)
    logging.getLogger("eniway_cloudsim").info("serving region %s on %s",
                                              args.region, sim.url)
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim._stop.set()
        sim.httpd.server_close()
        if args.network and args.teardown_on_exit:
            sim.teardown_network()
        sim.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
