"""Leader election on a coordination.k8s.io Lease, so exactly one replica acts.

Why a Lease and not kopf peering: kopf freezes every replica when two share a priority and
lets a newcomer with a higher priority take over while the old one may still be mid-call.
With a Lease the standby does nothing until the holder stops renewing for a whole lease
duration, and the active replica checks (``assert_leader``) that its own renewal is still
fresh right before every attempt of every cloud call (retries included, after every wait in
the rate limiter or a back-off, no wait longer than a second) and before every write to the
API server, so a paused or partitioned leader stops acting before a standby may take over
(renew deadline < lease duration, as client-go does), and its round in flight stops there.
Expiry is judged on the local monotonic clock (the record unchanged for a lease duration),
never by comparing clocks of two machines.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


class NotLeader(RuntimeError):
    pass


def _micro_now() -> dt.datetime:
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=max(now.microsecond, 1))  # always serialised with micros


class LeaseElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 lease_seconds: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0) -> None:
        assert renew_deadline < lease_seconds
        self.coord = client.CoordinationV1Api(api)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # monotonic time of our last good renewal
        self._stop = threading.Event()
        self.on_lost: Callable[[], None] | None = None

    # -- state ---------------------------------------------------------------------------
    def is_leader(self) -> bool:
        r = self._renewed_at
        return r is not None and time.monotonic() - r < self.renew_deadline

    def assert_leader(self, what: str = "") -> None:
        if not self.is_leader():
            raise NotLeader(f"not the leader any more; refusing {what}")

    # -- protocol ------------------------------------------------------------------------
    def _spec(self, transitions: int, acquire: bool) -> client.V1LeaseSpec:
        now = _micro_now()
        return client.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=int(self.lease_seconds),
            renew_time=now, acquire_time=now if acquire else None,
            lease_transitions=transitions)

    def try_acquire_or_renew(self) -> bool:
        t0 = time.monotonic()
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                log.warning("lease read failed: %s", e.reason)
                return False
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name),
                                  spec=self._spec(0, True))
            try:
                self.coord.create_namespaced_lease(self.namespace, body)
            except ApiException as e2:
                log.info("lease create lost a race: %s", e2.reason)
                return False
            self._renewed_at = t0
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        record = (holder, str(spec.renew_time))
        if record != self._observed:
            self._observed, self._observed_at = record, t0
        duration = float(spec.lease_duration_seconds or self.lease_seconds)
        mine = holder == self.identity
        expired = t0 - self._observed_at >= duration
        if not mine and holder and not expired:
            return False
        transitions = int(spec.lease_transitions or 0) + (0 if mine else 1)
        if mine:
            new_spec = self._spec(transitions, False)
            new_spec.acquire_time = spec.acquire_time
        else:
            new_spec = self._spec(transitions, True)
        lease.spec = new_spec  # resourceVersion kept: a concurrent writer makes this fail
        try:
            self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            log.info("lease update failed: %s", e.reason)
            return False
        self._renewed_at = t0
        self._observed = (self.identity, str(new_spec.renew_time))
        self._observed_at = t0
        if not mine:
            log.info("acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
        return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until leader (True) or ``stop`` is set (False)."""
        stop = stop or self._stop
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            stop.wait(self.retry_period)
        return False

    def keep_renewing(self) -> threading.Thread:
        """Renew in the background; when renewal fails past the deadline, call on_lost."""
        def loop() -> None:
            while not self._stop.wait(self.retry_period):
                ok = False
                try:
                    ok = self.try_acquire_or_renew()
                except Exception as e:
                    log.warning("lease renewal error: %s", e)
                if not ok and not self.is_leader():
                    log.error("lost the leader lease %s/%s", self.namespace, self.name)
                    self._renewed_at = None
                    if self.on_lost:
                        self.on_lost()
                    return
        t = threading.Thread(target=loop, name="lease", daemon=True)
        t.start()
        return t

    def release(self) -> None:
        """Give the lease up on a clean stop, so the standby takes over at once."""
        self._stop.set()
        if not self.is_leader():
            return
        self._renewed_at = None
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.lease_duration_seconds = 1
                self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as e:
            log.info("lease release failed: %s", e.reason)
