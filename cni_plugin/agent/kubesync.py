"""The agent's API-server side: watches (its node's ENIs, its ENIPool), writes (PodIPs,
``status.agent``) and the periodic GC/resync loop.

PodIP writes are queued and done by one thread with retries, so a slow or unreachable API
server never slows a CNI ADD: the node store is the source of truth on the node, and
PodIPs converge to it (and are reconciled on start and on every GC pass). ``status.agent``
(acknowledgements, heartbeat) has a thread of its own: a PodIP write that keeps failing (a
ResourceQuota, a webhook) never holds back the release handshake or the heartbeat.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from cni_plugin import contract
from cni_plugin.agent.core import NodeAgent, PodSnapshot
from cni_plugin.agent.events import event_body, post_event
from cni_plugin.agent.kube import ApiError, Kube
from cni_plugin.agent.store import Allocation

log = logging.getLogger("eniway.kube")

ENIS = f"/apis/{contract.API_VERSION}/{contract.PLURAL_ENI}"
ENIPOOLS = f"/apis/{contract.API_VERSION}/{contract.PLURAL_ENIPOOL}"
STATUS_MIN_GAP = 0.5
PODIPS = f"/apis/{contract.API_VERSION}/{contract.PLURAL_PODIP}"


def podip_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{contract.API_VERSION}/namespaces/{namespace}/{contract.PLURAL_PODIP}"
    return f"{base}/{name}" if name else base


def _cooldown(pool: dict[str, Any] | None) -> float | None:
    """``ip_cooldown`` (seconds) of the configuration the operator put in effect for
    this node (ENIPool ``status.config``); None when it has not written one."""
    value = (((pool or {}).get("status") or {}).get("config") or {}).get("ip_cooldown")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


class KubeSync:
    def __init__(self, agent: NodeAgent, kube: Kube) -> None:
        self.agent = agent
        self.kube = kube
        self.node = agent.cfg.node_name
        self.stop = threading.Event()
        self._enis: dict[str, dict[str, Any]] = {}
        self._eni_lock = threading.Lock()
        self._writes: queue.Queue[tuple[str, Allocation]] = queue.Queue()
        self._failing: set[tuple[str, str, str]] = set()  # writes an Event was raised for
        self._status_dirty = threading.Event()
        agent.on_bound = lambda rec: self._writes.put(("bind", rec))
        agent.on_unbound = lambda rec: self._writes.put(("unbind", rec))
        agent.on_change = self._status_dirty.set
        self._pods: dict[str, tuple[str, bool]] = {}  # "ns/name" -> (uid, opted in)
        self._pods_lock = threading.Lock()

    def start(self) -> None:
        for name, target in (("watch-enis", self._watch_enis), ("watch-pool", self._watch_pool),
                             ("writer", self._writer), ("status", self._status_loop),
                             ("gc", self._gc_loop), ("watch-pods", self._watch_pods),
                             ("resync", self._resync_loop)):
            threading.Thread(target=target, name=name, daemon=True).start()

    # -- watches -------------------------------------------------------------------------

    def _watch_forever(self, path: str, params: dict[str, str],
                       on_list: Callable[[list[dict[str, Any]]], None],
                       on_event: Callable[[str, dict[str, Any]], None]) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                listed = self.kube.request("GET", path, params=params)
                on_list(listed.get("items") or [])
                rv = listed["metadata"]["resourceVersion"]
                backoff = 0.5
                while not self.stop.is_set():
                    for ev in self.kube.watch(path, rv, params=params):
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            raise ApiError(int(obj.get("code") or 500), obj, f"WATCH {path}")
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if ev.get("type") != "BOOKMARK":
                            on_event(str(ev.get("type")), obj)
            except Exception as e:
                self.agent.metrics.kube_errors.labels("watch").inc()
                self.agent.errors.add("kube", f"watch {path}: {e}")
                log.warning("watch %s: %s; relisting in %.1fs", path, e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _seen(self, resource: str, via: str, obj: dict[str, Any]) -> None:
        mine = self._mine(obj) if resource == "enis" else (
            obj.get("metadata", {}).get("name") == self.node)
        self.agent.metrics.watch_objects.labels(resource, via,
                                                "own" if mine else "other").inc()

    def _watch_enis(self) -> None:
        def on_list(items: list[dict[str, Any]]) -> None:
            for o in items:
                self._seen("enis", "list", o)
            with self._eni_lock:
                self._enis = {o["metadata"]["name"]: o for o in items if self._mine(o)}
                self.agent.set_enis(list(self._enis.values()))

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            self._seen("enis", "watch", obj)
            name = obj["metadata"]["name"]
            with self._eni_lock:
                if kind == "DELETED" or not self._mine(obj):
                    if self._enis.pop(name, None) is None:
                        return
                else:
                    self._enis[name] = obj
                self.agent.set_enis(list(self._enis.values()))

        # Only this node's ENIs (the operator labels every ENI with its node, and labels
        # any it finds without): the API server filters, so no other node's change reaches
        # this agent. One that loses the label arrives as DELETED and is not served until
        # the operator puts it back.
        self._watch_forever(ENIS, {"labelSelector": f"{contract.LABEL_NODE}={self.node}"},
                            on_list, on_event)

    def _watch_pods(self) -> None:
        """This node's pods, for ADD to tell an exclusive-ENI pod without asking."""
        def entry(obj: dict[str, Any]) -> tuple[str, tuple[str, bool]]:
            md = obj.get("metadata") or {}
            return (f"{md.get('namespace')}/{md.get('name')}",
                    (str(md.get("uid") or ""), contract.wants_exclusive_eni(obj)))

        def on_list(items: list[dict[str, Any]]) -> None:
            with self._pods_lock:
                self._pods = dict(entry(o) for o in items)

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            key, value = entry(obj)
            with self._pods_lock:
                if kind == "DELETED":
                    self._pods.pop(key, None)
                else:
                    self._pods[key] = value

        self._watch_forever("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node}"},
                            on_list, on_event)

    def _resync_loop(self) -> None:
        """Links that appear late (async attach) and tables someone flushed."""
        while not self.stop.wait(self.agent.cfg.resync_interval):
            with self._eni_lock:
                if self.agent.enis_synced:
                    try:
                        self.agent.set_enis(list(self._enis.values()))
                    except Exception as e:
                        log.warning("ENI resync: %s", e)

    def _mine(self, obj: dict[str, Any]) -> bool:
        return bool((obj.get("spec") or {}).get("nodeName") == self.node)

    def _watch_pool(self) -> None:
        params = {"fieldSelector": f"metadata.name={self.node}"}

        def apply(obj: dict[str, Any] | None) -> None:
            release = ((obj or {}).get("spec") or {}).get("release") or {}
            self.agent.set_cooldown(_cooldown(obj))
            self.agent.set_release(release.get("ips") or [],
                                   str(release.get(contract.RELEASE_TOKEN) or ""))

        def on_list(items: list[dict[str, Any]]) -> None:
            for o in items:
                self._seen("enipools", "list", o)
            apply(items[0] if items else None)

        def on_event(kind: str, obj: dict[str, Any]) -> None:
            self._seen("enipools", "watch", obj)
            apply(None if kind == "DELETED" else obj)

        self._watch_forever(ENIPOOLS, params, on_list, on_event)

    # -- writes --------------------------------------------------------------------------

    def _writer(self) -> None:
        """PodIP writes, in order; a failed one goes to the back of the queue."""
        while not self.stop.is_set():
            try:
                op, rec = self._writes.get(timeout=0.5)
            except queue.Empty:
                continue
            key = (op, rec.ip, rec.containerId)
            try:
                (self._bind if op == "bind" else self._unbind)(rec)
                self._failing.discard(key)
            except Exception as e:
                self.agent.metrics.kube_errors.labels(f"podip-{op}").inc()
                self.agent.errors.add("kube", f"PodIP {op} {rec.podNamespace}/{rec.podName} "
                                              f"({rec.ip}): {e}")
                log.warning("PodIP %s %s/%s: %s; retrying", op, rec.podNamespace,
                            rec.podName, e)
                if key not in self._failing:  # one Event per failing write, not per retry
                    self._failing.add(key)
                    self._podip_event(op, rec, e)
                self.stop.wait(1.0)
                self._writes.put((op, rec))

    def _podip_event(self, op: str, rec: Allocation, error: Exception) -> None:
        """A Warning Event on the pod: ``kubectl describe pod`` tells why its PodIP is
        missing (a ResourceQuota, a webhook, RBAC), not only the agent's log."""
        if not rec.podName:
            return
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": rec.podNamespace,
                    "name": rec.podName, "uid": rec.podUID}
        post_event(self.kube, event_body(
            involved, "PodIPWriteFailed",
            f"eniway-agent could not {'write' if op == 'bind' else 'delete'} the PodIP of "
            f"{rec.ip} (retrying; the pod's network works meanwhile): {error}", self.node))

    def _status_loop(self) -> None:
        """``status.agent`` on every change (at most one write per STATUS_MIN_GAP, bursts
        of pod churn coalesced) and every heartbeat interval; independent of PodIP writes."""
        interval = self.agent.cfg.heartbeat_interval
        next_heartbeat = 0.0
        while not self.stop.is_set():
            self._status_dirty.wait(max(0.0, min(next_heartbeat - time.monotonic(), 1.0)))
            if self.stop.is_set():
                return
            if not self._status_dirty.is_set() and time.monotonic() < next_heartbeat:
                continue
            self._status_dirty.clear()
            try:
                self.publish_status()
                next_heartbeat = time.monotonic() + interval
            except Exception as e:
                self.agent.metrics.kube_errors.labels("status").inc()
                self.agent.errors.add("kube", f"status.agent: {e}")
                log.warning("status.agent: %s", e)
                self._status_dirty.set()
                self.stop.wait(1.0)
                continue
            self.stop.wait(STATUS_MIN_GAP)

    def publish_status(self) -> None:
        body = self.agent.agent_status()
        try:
            self.kube.request("PATCH", f"{ENIPOOLS}/{self.node}/status",
                              {"status": {"agent": body}},
                              content_type="application/merge-patch+json")
        except ApiError as e:
            if e.status != 404:  # no ENIPool yet: the operator creates it
                raise

    def _podip(self, rec: Allocation) -> dict[str, Any]:
        return {
            "apiVersion": contract.API_VERSION, "kind": contract.KIND_PODIP,
            "metadata": {"name": rec.podName, "namespace": rec.podNamespace,
                         "labels": {contract.LABEL_NODE: self.node,
                                    contract.LABEL_ENI: rec.eniId}},
            "spec": {"ip": rec.ip, "eniId": rec.eniId, "nodeName": self.node,
                     "podUID": rec.podUID, "containerId": rec.containerId,
                     "interface": rec.ifname, "netns": rec.netns,
                     "allocatedAt": rec.allocatedAt,
                     "mode": contract.MODE_EXCLUSIVE if rec.exclusive else contract.MODE_SHARED},
        }

    def _bind(self, rec: Allocation) -> None:
        if not rec.podName or rec.ifname != "eth0" or self.agent.records.get(rec.ip) is not rec:
            return  # released meanwhile (maybe already handed to another pod)
        body = self._podip(rec)
        try:
            self.kube.request("POST", podip_path(rec.podNamespace), body)
        except ApiError as e:
            if e.status == 404:  # namespace gone: the pod is gone too, GC follows
                return
            if e.status != 409:
                raise
            cur = self.kube.request("GET", podip_path(rec.podNamespace, rec.podName))
            if cur.get("spec") == body["spec"]:
                return
            body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            self.kube.request("PUT", podip_path(rec.podNamespace, rec.podName), body)

    def _unbind(self, rec: Allocation) -> None:
        if not rec.podName or rec.ifname != "eth0":
            return
        path = podip_path(rec.podNamespace, rec.podName)
        try:
            cur = self.kube.request("GET", path)
        except ApiError as e:
            if e.status == 404:
                return
            raise
        spec = cur.get("spec") or {}
        if spec.get("containerId") != rec.containerId or spec.get("ip") != rec.ip:
            return  # a newer sandbox of the same pod owns it now
        with contextlib.suppress(ApiError):
            self.kube.request("DELETE", path, {"preconditions": {
                "uid": cur["metadata"]["uid"]}})

    def reconcile_podips(self) -> None:
        """PodIPs of this node match the store: create missing, delete stale."""
        listed = self.kube.request("GET", PODIPS, params={
            "labelSelector": f"{contract.LABEL_NODE}={self.node}"})
        have = {(o["metadata"]["namespace"], o["metadata"]["name"]): o
                for o in listed.get("items") or []}
        want = {(r.podNamespace, r.podName): r for r in self.agent.snapshot()
                if r.podName and r.ifname == "eth0"}
        for key, obj in have.items():
            if key not in want:
                self._writes.put(("unbind", _from_podip(obj)))
        for key, rec in want.items():
            spec = (have[key].get("spec") or {}) if key in have else {}
            if (spec.get("ip"), spec.get("containerId")) != (rec.ip, rec.containerId):
                self._writes.put(("bind", rec))

    def pod_wants_exclusive(self, namespace: str, name: str, uid: str = "") -> bool:
        """Whether the pod opted in to its own ENI (ADD of a pod no exclusive ENI is
        recorded for yet): from the node's pod watch, else (a pod the watch has not
        brought yet) from the API server. The API server unreachable: False, the pod
        gets a shared IP as every pod does while it is down (logged and kept for
        eniway-agent debug)."""
        with self._pods_lock:
            known = self._pods.get(f"{namespace}/{name}")
        if known is not None and (not uid or known[0] == uid):
            return known[1]
        try:
            pod = self.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        except ApiError as e:
            if e.status == 404:
                return False
            self._pod_read_failed(namespace, name, e)
            return False
        except Exception as e:
            self._pod_read_failed(namespace, name, e)
            return False
        return contract.wants_exclusive_eni(pod)

    def _pod_read_failed(self, namespace: str, name: str, e: Exception) -> None:
        self.agent.metrics.kube_errors.labels("get-pod").inc()
        self.agent.errors.add("kube", f"pod {namespace}/{name}: {e}; ADD as a shared IP")
        log.warning("reading pod %s/%s: %s (treated as a shared-IP pod)", namespace, name, e)

    # -- GC ------------------------------------------------------------------------------

    def list_pods(self) -> PodSnapshot | None:
        try:
            pods = self.kube.request("GET", "/api/v1/pods", params={
                "fieldSelector": f"spec.nodeName={self.node}"})
        except Exception as e:
            self.agent.metrics.kube_errors.labels("list-pods").inc()
            log.warning("listing pods of %s: %s (GC by netns only this round)", self.node, e)
            return None
        snap = PodSnapshot()
        for p in pods.get("items") or []:
            md = p["metadata"]
            snap.uids[f"{md['namespace']}/{md['name']}"] = md.get("uid", "")
        return snap

    def _gc_loop(self) -> None:
        while not self.stop.wait(self.agent.cfg.gc_interval):
            try:
                self.agent.gc_once(self.list_pods())
                self.reconcile_podips()
            except Exception as e:
                log.warning("GC pass: %s", e)


def _from_podip(obj: dict[str, Any]) -> Allocation:
    spec = obj.get("spec") or {}
    return Allocation(
        ip=spec.get("ip", ""), eniId=spec.get("eniId", ""),
        containerId=spec.get("containerId", ""), ifname=spec.get("interface") or "eth0",
        netns=spec.get("netns", ""), podNamespace=obj["metadata"]["namespace"],
        podName=obj["metadata"]["name"], podUID=spec.get("podUID", ""), veth="", hostNetns="",
        table=0, mtu=0, allocatedAt=spec.get("allocatedAt", ""), allocatedAtEpoch=0.0)
