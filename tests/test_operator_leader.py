"""Lease leader election against the real apiserver: one leader, fencing by the renew
deadline, takeover only after a whole lease duration, immediate handover on release."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from eniway_operator import kube as kube_mod
from eniway_operator.leader import LeaseElector, NotLeader

pytestmark = pytest.mark.cluster


@pytest.fixture
def ns(cluster: Any) -> Iterator[tuple[client.ApiClient, str]]:
    api = kube_mod.load_config(str(cluster.kubeconfig))
    name = f"lease-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})  # type: ignore[arg-type]
    try:
        yield api, name
    finally:
        with contextlib.suppress(ApiException):
            client.CoreV1Api(api).delete_namespace(name)
        api.close()


def test_one_leader_and_takeover_after_expiry(ns: tuple[client.ApiClient, str]) -> None:
    api, namespace = ns
    a = LeaseElector(api, namespace, "op", "a", lease_seconds=3, renew_deadline=2)
    b = LeaseElector(api, namespace, "op", "b", lease_seconds=3, renew_deadline=2)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.is_leader() and not b.is_leader()
    a.assert_leader("x")
    with pytest.raises(NotLeader):
        b.assert_leader("x")
    # a stops renewing (paused): it fences itself after the renew deadline...
    t0 = time.monotonic()
    while a.is_leader():
        assert not b.try_acquire_or_renew()
        time.sleep(0.2)
    fenced_after = time.monotonic() - t0
    with pytest.raises(NotLeader):
        a.assert_leader("x")
    # ...and b takes over only once the record stood still for a whole lease duration.
    while not b.try_acquire_or_renew():
        time.sleep(0.2)
    taken_after = time.monotonic() - t0
    assert fenced_after < taken_after
    assert not a.try_acquire_or_renew()  # the old leader cannot come back while b renews
    lease = client.CoordinationV1Api(api).read_namespaced_lease("op", namespace)
    assert lease.spec is not None
    assert lease.spec.holder_identity == "b"
    assert lease.spec.lease_transitions == 1


def test_release_hands_over_at_once(ns: tuple[client.ApiClient, str]) -> None:
    api, namespace = ns
    a = LeaseElector(api, namespace, "op", "a", lease_seconds=30, renew_deadline=20)
    b = LeaseElector(api, namespace, "op", "b", lease_seconds=30, renew_deadline=20)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.is_leader()
    assert b.try_acquire_or_renew()
