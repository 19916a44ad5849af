"""Prometheus metrics and the health endpoints (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cni_plugin import contract

# Label values whose series exist (at 0) from the first scrape: rate(), increase() and
# alerts need a series before its first event.
POOL_STATES = ("total", "free", "cooling", "allocated", "releasing")
CNI_COMMANDS = (contract.WIRE_ADD, contract.WIRE_DEL, contract.WIRE_CHECK)
CNI_ERROR_CODES = (contract.ERR_TRY_AGAIN, contract.ERR_NO_FREE_IP, contract.ERR_DATAPATH,
                   contract.ERR_INTERNAL)
GC_REASONS = ("pod-gone", "pod-replaced", "netns-gone", "cni-gc")
ORPHAN_KINDS = ("link", "rule")
KUBE_OPS = ("watch", "podip-bind", "podip-unbind", "status", "list-pods")
WATCHED = ("enis", "enipools")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pool_ips = Gauge("eniway_pool_ips", "IPs of this node's pool by state",
                              ["state"], registry=r)
        self.enis = Gauge("eniway_enis_ready", "ENIs whose link is up and serving pods",
                          registry=r)
        self.duration = Histogram(
            "eniway_cni_request_duration_seconds", "CNI requests served by the agent",
            ["command"], registry=r,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.errors = Counter("eniway_cni_errors_total", "Failed CNI requests by CNI error code",
                              ["command", "code"], registry=r)
        self.gc_reclaimed = Counter("eniway_gc_reclaimed_total",
                                    "Allocations released by GC (pod or netns gone)",
                                    ["reason"], registry=r)
        self.gc_orphans = Counter("eniway_gc_orphans_removed_total",
                                  "Links and rules with no allocation removed by GC",
                                  ["kind"], registry=r)
        self.repairs = Counter("eniway_datapath_repairs_total",
                               "Live pods whose host route/rules were checked and re-applied",
                               registry=r)
        self.kube_errors = Counter("eniway_kube_errors_total", "Failed API server calls",
                                   ["op"], registry=r)
        self.watch_objects = Counter(
            "eniway_kube_watch_objects_total",
            "Objects the API server sent (list or watch event), by resource and whether "
            "they are about this node", ["resource", "via", "scope"], registry=r)
        self._export_from_start()

    def _export_from_start(self) -> None:
        for state in POOL_STATES:
            self.pool_ips.labels(state)
        for cmd in CNI_COMMANDS:
            self.duration.labels(cmd)
            for code in CNI_ERROR_CODES:
                self.errors.labels(cmd, str(code))
        for reason in GC_REASONS:
            self.gc_reclaimed.labels(reason)
        for kind in ORPHAN_KINDS:
            self.gc_orphans.labels(kind)
        for op in KUBE_OPS:
            self.kube_errors.labels(op)
        for resource in WATCHED:
            for via in ("list", "watch"):
                for scope in ("own", "other"):
                    self.watch_objects.labels(resource, via, scope)

    def set_pool(self, counts: dict[str, int]) -> None:
        for state, n in counts.items():
            self.pool_ips.labels(state).set(n)


def serve(metrics: Metrics, addr: str, healthy: Callable[[], bool],
          ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Start the HTTP endpoint on ``host:port`` in a daemon thread."""
    host, _, port = addr.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
            elif path in ("/healthz", "/readyz"):
                ok = healthy() if path == "/healthz" else ready()
                body, ctype, code = (b"ok\n" if ok else b"not ok\n"), "text/plain", (
                    200 if ok else 503)
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
