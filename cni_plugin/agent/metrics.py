"""Prometheus metrics and the health endpoints (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


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
