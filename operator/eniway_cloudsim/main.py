"""eniway-cloudsim: an emulator of the Alibaba Cloud ECS ENI API, its instance metadata
service and (with root) its VPC network, for running eniway without a cloud account."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from eniway_operator.cloud.ratelimit import Rate

from .engine import Settings
from .server import CloudSim

EPILOG = """\
Endpoints (one listener):
  /                                ECS RPC (API version 2014-05-26), signed ACS3-HMAC-SHA256:
                                   point alibabacloud_ecs20140526 at --listen with protocol http
  /admin/...                       JSON admin API (topology, instances, faults, counters)
  /instances/<id>/latest/...       instance metadata, Alibaba layout (also /latest/... with
                                   header X-Eniway-Instance-Id)

Example:
  eniway-cloudsim --listen 127.0.0.1:8765 --state /var/lib/eniway-cloudsim.db \\
      --attach-delay 1 --throttle '*=20/40' --fault AssignPrivateIpAddresses=0.1
See docs/cloudsim.md.
"""


def _throttle(spec: str) -> tuple[str, Rate]:
    """API=PER_SECOND[/BURST]"""
    api, _, rate = spec.partition("=")
    per_s, _, burst = rate.partition("/")
    per_second = float(per_s)
    return api, Rate(per_second * 60, int(burst) if burst else max(1, int(per_second)))


def _fault(spec: str) -> tuple[str, dict[str, Any]]:
    """API=ERROR_RATE[:CODE[:STATUS]] or API={json}"""
    api, _, rest = spec.partition("=")
    if rest.startswith("{"):
        return api, json.loads(rest)
    rate, _, tail = rest.partition(":")
    code, _, status = tail.partition(":")
    out: dict[str, Any] = {"error_rate": float(rate)}
    if code:
        out["code"] = code
        out["status"] = int(status) if status else 500
    return api, out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eniway-cloudsim", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:8765",
                   help="HOST:PORT to serve on; port 0 picks a free one (default %(default)s)")
    p.add_argument("--state", default=":memory:",
                   help="SQLite file holding the region's state; survives restarts "
                        "(default: in memory, lost on exit)")
    p.add_argument("--region", default="cn-hangzhou", help="region id (default %(default)s)")
    p.add_argument("--eni-quota", type=int, default=100,
                   help="secondary ENIs allowed in the region (default %(default)s, as ECS)")
    p.add_argument("--attach-delay", type=float, default=0.5,
                   help="seconds an ENI stays Attaching (default %(default)s)")
    p.add_argument("--detach-delay", type=float, default=0.5,
                   help="seconds an ENI stays Detaching (default %(default)s)")
    p.add_argument("--access-key", action="append", default=[], metavar="ID:SECRET",
                   help="accepted AccessKey pair, repeatable (default eniway:eniway-secret)")
    p.add_argument("--no-auth", action="store_true",
                   help="accept any signature (the signature is checked by default)")
    p.add_argument("--throttle", action="append", default=[], metavar="API=PER_S[/BURST]",
                   help="token bucket per API ('*' for every API), answering Throttling when "
                        "empty; repeatable (default: none)")
    p.add_argument("--fault", action="append", default=[], metavar="API=RATE[:CODE[:STATUS]]",
                   help="inject errors on a share of calls ('*' for all); repeatable")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="added latency on every ECS call")
    p.add_argument("--seed", type=int, default=None, help="seed for fault injection")
    p.add_argument("--network", action="store_true",
                   help="build the VPC network with namespaces, veths, routes and nftables "
                        "(needs root)")
    p.add_argument("--netns-prefix", default="csim-",
                   help="prefix of the VPC namespaces in network mode (default %(default)s)")
    p.add_argument("--teardown-on-exit", action="store_true",
                   help="in network mode, delete the namespaces on exit")
    p.add_argument("--print-endpoint", action="store_true",
                   help="print the bound endpoint as JSON on stdout once listening")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def make_sim(args: argparse.Namespace) -> CloudSim:
    host, _, port = args.listen.rpartition(":")
    network = None
    if args.network:
        from .netmode import NetMode

        network = NetMode(args.netns_prefix)
    keys = dict(k.split(":", 1) for k in args.access_key) if args.access_key else None
    sim = CloudSim(
        host=host or "127.0.0.1", port=int(port), state=args.state,
        settings=Settings(region_id=args.region, eni_quota=args.eni_quota,
                          attach_delay=args.attach_delay, detach_delay=args.detach_delay),
        network=network, keys=keys, auth=not args.no_auth, seed=args.seed,
        throttle=dict(_throttle(s) for s in args.throttle))
    faults = dict(_fault(s) for s in args.fault)
    if args.latency_ms:
        faults.setdefault("*", {})["latency_ms"] = args.latency_ms
    if faults:
        sim.gate.set_faults(faults, args.seed)
    return sim


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sim = make_sim(args)

    def _term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    if args.print_endpoint:
        print(json.dumps({"endpoint": sim.endpoint, "url": sim.url}), flush=True)
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
