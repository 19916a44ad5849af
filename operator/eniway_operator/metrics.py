"""Prometheus metrics, a metering wrapper around the cloud provider, and the HTTP endpoint
(/metrics, /healthz, /readyz)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PCounter

from eniway_operator.cloud.base import (
    CloudError,
    CloudProvider,
    InstanceInfo,
    InstanceLimits,
    NetworkInterface,
    PublicIp,
    SecurityGroup,
    VSwitch,
)
from eniway_operator.cloud.ratelimit import DEFAULT_RATES

REGISTRY = CollectorRegistry()
POOL_IPS = Gauge("eniway_pool_ips", "Pod IPs of a node's pool by state", ["node", "state"],
                 registry=REGISTRY)
POOL_ENIS = Gauge("eniway_pool_enis", "Secondary ENIs attached to a node", ["node"],
                  registry=REGISTRY)
POOL_PENDING = Gauge("eniway_pool_pending_pods", "Pods on a node waiting for an IP", ["node"],
                     registry=REGISTRY)
CLOUD_CALLS = PCounter("eniway_cloud_calls", "Cloud API calls by API and result",
                       ["api", "result"], registry=REGISTRY)
CLOUD_ATTEMPTS = PCounter("eniway_cloud_attempts",
                          "Cloud API requests sent, each retry counted, by API and result",
                          ["api", "result"], registry=REGISTRY)
CLOUD_LATENCY = Histogram("eniway_cloud_call_seconds", "Cloud API call latency", ["api"],
                          registry=REGISTRY,
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILE = Histogram("eniway_reconcile_seconds", "Node reconcile latency", ["result"],
                      registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LEADER = Gauge("eniway_leader", "1 while this replica holds the leader lease",
               registry=REGISTRY)
KUBE_REQUESTS = PCounter("eniway_kube_requests", "API server requests of the operator's "
                         "client (kopf's watches apart), by verb and resource",
                         ["verb", "resource"], registry=REGISTRY)
WEBHOOK_ADMISSIONS = PCounter("eniway_webhook_admissions", "Admission reviews the webhook "
                              "answered, by result (exclusive, unchanged, bad_request, error)",
                              ["result"], registry=REGISTRY)
GC_DELETED = PCounter("eniway_gc_deleted", "Objects removed by garbage collection", ["kind"],
                      registry=REGISTRY)



def _export_from_start() -> None:
    """The series alerts and dashboards read exist (at 0) from the first scrape, not
    only after their first event: rate() and absent() need them."""
    for api in DEFAULT_RATES:
        CLOUD_LATENCY.labels(api)
        for result in ("ok", "Throttled", "ServerError", "QuotaExceeded"):
            CLOUD_CALLS.labels(api, result)
            CLOUD_ATTEMPTS.labels(api, result)
    for result in ("ok", "error"):
        RECONCILE.labels(result)
    for kind in ("eni", "eni_resource"):
        GC_DELETED.labels(kind)
    for verb, resource in (("patch", "enipools/status"), ("create", "events")):
        KUBE_REQUESTS.labels(verb, resource)
    for result in ("exclusive", "unchanged", "bad_request", "error"):
        WEBHOOK_ADMISSIONS.labels(result)


_export_from_start()

T = TypeVar("T")


def count_attempt(api: str, result: str) -> None:
    """AliyunProvider's ``on_attempt``: throttling shows at its first answer, not after
    the retries, and as many times as the cloud refused."""
    CLOUD_ATTEMPTS.labels(api, result).inc()


def set_pool(node: str, counts: Mapping[str, int]) -> None:
    for state in ("total", "free", "allocated", "releasing"):
        POOL_IPS.labels(node, state).set(counts.get(state, 0))
    POOL_ENIS.labels(node).set(counts.get("enis", 0))
    POOL_PENDING.labels(node).set(counts.get("pending", 0))


def forget_pool(node: str) -> None:
    for state in ("total", "free", "allocated", "releasing"):
        with contextlib.suppress(KeyError):
            POOL_IPS.remove(node, state)
    for g in (POOL_ENIS, POOL_PENDING):
        with contextlib.suppress(KeyError):
            g.remove(node)


class MeteredProvider(CloudProvider):
    """Delegates to a provider, counting every call by API and result and timing it.
    ``calls`` keeps plain counts too (the benchmark and tests read them). Leadership
    fencing is the inner provider's (it checks before each attempt, after every wait)."""

    def __init__(self, inner: CloudProvider) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _call(self, api: str, fn: Callable[[], T]) -> T:
        t0 = time.monotonic()
        result = "ok"
        try:
            return fn()
        except CloudError as e:
            result = type(e).__name__
            raise
        except Exception:
            result = "error"
            raise
        finally:
            CLOUD_LATENCY.labels(api).observe(time.monotonic() - t0)
            CLOUD_CALLS.labels(api, result).inc()
            with self._lock:
                self.calls[api] += 1

    def describe_instance(self, instance_id: str) -> InstanceInfo:
        return self._call("DescribeInstances", lambda: self.inner.describe_instance(instance_id))

    def describe_instances(self, instance_ids: Sequence[str]) -> list[InstanceInfo]:
        return self._call("DescribeInstances",
                          lambda: self.inner.describe_instances(instance_ids))

    def instance_limits(self, instance_type: str) -> InstanceLimits:
        return self._call("DescribeInstanceTypes",
                          lambda: self.inner.instance_limits(instance_type))

    def describe_vswitches(self, vswitch_ids: Sequence[str]) -> list[VSwitch]:
        return self._call("DescribeVSwitches", lambda: self.inner.describe_vswitches(vswitch_ids))

    def describe_security_groups(self, security_group_ids: Sequence[str]
                                 ) -> list[SecurityGroup]:
        return self._call("DescribeSecurityGroups",
                          lambda: self.inner.describe_security_groups(security_group_ids))

    def create_eni(self, vswitch_id: str, security_group_ids: Sequence[str],
                   tags: Mapping[str, str], description: str = "", secondary_ip_count: int = 0,
                   client_token: str = "", delete_on_release: bool = False,
                   ) -> NetworkInterface:
        return self._call("CreateNetworkInterface", lambda: self.inner.create_eni(
            vswitch_id, security_group_ids, tags, description, secondary_ip_count,
            client_token, delete_on_release))

    def attach_eni(self, eni_id: str, instance_id: str) -> None:
        self._call("AttachNetworkInterface",
                   lambda: self.inner.attach_eni(eni_id, instance_id))

    def detach_eni(self, eni_id: str, instance_id: str) -> None:
        self._call("DetachNetworkInterface",
                   lambda: self.inner.detach_eni(eni_id, instance_id))

    def delete_eni(self, eni_id: str) -> None:
        self._call("DeleteNetworkInterface", lambda: self.inner.delete_eni(eni_id))

    def describe_enis(self, eni_ids: Sequence[str] = (), instance_id: str = "",
                      status: str = "", tags: Mapping[str, str] | None = None,
                      ) -> list[NetworkInterface]:
        return self._call("DescribeNetworkInterfaces", lambda: self.inner.describe_enis(
            eni_ids, instance_id, status, tags))

    def assign_ips(self, eni_id: str, count: int, client_token: str = "") -> list[str]:
        return self._call("AssignPrivateIpAddresses",
                          lambda: self.inner.assign_ips(eni_id, count, client_token))

    def unassign_ips(self, eni_id: str, ips: Sequence[str]) -> None:
        self._call("UnassignPrivateIpAddresses", lambda: self.inner.unassign_ips(eni_id, ips))

    def allocate_public_ip(self, bandwidth: int, tags: Mapping[str, str],
                           client_token: str = "") -> PublicIp:
        return self._call("AllocateEipAddress", lambda: self.inner.allocate_public_ip(
            bandwidth, tags, client_token))

    def associate_public_ip(self, allocation_id: str, eni_id: str, private_ip: str,
                            client_token: str = "") -> None:
        self._call("AssociateEipAddress", lambda: self.inner.associate_public_ip(
            allocation_id, eni_id, private_ip, client_token))

    def unassociate_public_ip(self, allocation_id: str, eni_id: str = "",
                              private_ip: str = "") -> None:
        self._call("UnassociateEipAddress", lambda: self.inner.unassociate_public_ip(
            allocation_id, eni_id, private_ip))

    def release_public_ip(self, allocation_id: str) -> None:
        self._call("ReleaseEipAddress", lambda: self.inner.release_public_ip(allocation_id))

    def describe_public_ips(self, allocation_ids: Sequence[str] = (),
                            tags: Mapping[str, str] | None = None, eni_id: str = ""
                            ) -> list[PublicIp]:
        return self._call("DescribeEipAddresses", lambda: self.inner.describe_public_ips(
            allocation_ids, tags, eni_id))


class Health:
    """What /healthz and /readyz report. ``beat`` is called by the scheduler loop."""

    def __init__(self, stale_after: float = 60.0) -> None:
        self.stale_after = stale_after
        self.last_beat = time.monotonic()
        self.leader = False
        self.ready = False

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def alive(self) -> bool:
        # A standby replica is alive while it waits for the lease.
        return not self.leader or time.monotonic() - self.last_beat < self.stale_after


def serve(port: int, health: Health, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body: bytes
            ctype = "text/plain; charset=utf-8"
            if self.path.startswith("/metrics"):
                code, body, ctype = 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok = health.alive()
                code, body = (200, b"ok\n") if ok else (500, b"reconcile loop stalled\n")
            elif self.path.startswith("/readyz"):
                code, body = (200, b"ready\n") if health.ready else (503, b"not ready\n")
            else:
                code, body = 404, b"not found\n"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
