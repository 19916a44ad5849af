"""kopf handlers: they only translate events into reconcile requests.

Indices (kept by kopf, fully listed before any handler runs) give each node's pending pods
and PodIPs, so a round never lists every pod in the cluster. The work itself happens in
``reconcile.Reconciler`` on a thread pool, scheduled by ``scheduler.Scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client import ApiClient

from cni_plugin import contract
from eniway_operator.exclusive_policy import wants_exclusive
from eniway_operator.exclusive_reconcile import ExclusiveReconciler, NodeFacts
from eniway_operator.gc import GarbageCollector
from eniway_operator.leader import NotLeader
from eniway_operator.reconcile import Demand, Reconciler
from eniway_operator.scheduler import Scheduler

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the handlers need; set by main before kopf starts."""

    scheduler: Scheduler
    reconciler: Reconciler
    api: ApiClient
    gc: GarbageCollector
    gc_interval: float = 60.0
    public_ips: Any = None  # eip_controller.PublicIps, None when public IPs are off
    public_ip_interval: float = 5.0
    debounce: float = 0.3
    exclusive: ExclusiveReconciler | None = None  # None: exclusive-ENI rounds off
    exclusive_interval: float = 10.0
    exclusive_wake: asyncio.Event | None = None
    indices: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # ENIPool: what others write
    node_digests: dict[str, str] = field(default_factory=dict)  # Node: what a round reads
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


RUNTIME: Runtime | None = None


def _rt() -> Runtime:
    assert RUNTIME is not None, "eniway_operator.handlers.RUNTIME is not set"
    return RUNTIME


def demand_of(node: str) -> Demand:
    """The node's pending pods and held IPs (PodIPs, and pods' own ``status.podIPs``: a
    PodIP write may fail for as long as the pod lives), from the kopf indices (event loop
    thread)."""
    idx = _rt().indices
    pods: dict[str, tuple[str, str, str]] = {}
    have: set[str] = set()
    addrs = idx.get("pod_addrs")
    if addrs is not None and node in addrs:
        for ns, name, uid, ips in addrs[node]:
            for ip in ips:
                pods[ip] = (ns, name, uid)
    podips = idx.get("pod_ips")
    if podips is not None and node in podips:
        for ip, ns, name, uid in podips[node]:
            if ip:
                pods[ip] = (ns, name, uid)
            have.add(f"{ns}/{name}")
    pending = 0
    pend = idx.get("pending_pods")
    if pend is not None and node in pend:
        pending = len({p for p in pend[node] if p not in have})
    return Demand(pending=pending, pods=pods)


# -- indices -------------------------------------------------------------------------------

# An index function returns {} (never None) when an object stops qualifying: kopf keeps an
# object's previous entry when the result is None, and drops it on an empty mapping.

@kopf.index("pods")
def pending_pods(spec: kopf.Spec, status: kopf.Status, name: str, namespace: str | None,
                 **_: Any) -> dict[str, str]:
    """Pods bound to a node, on the pod network, not started yet."""
    node = spec.get("nodeName")
    if not node or spec.get("hostNetwork") or status.get("phase") != "Pending":
        return {}
    return {node: f"{namespace}/{name}"}


@kopf.index("pods")
def pod_addrs(spec: kopf.Spec, status: kopf.Status, name: str, namespace: str | None,
              uid: str | None, **_: Any) -> dict[str, tuple[str, str, str, tuple[str, ...]]]:
    """IPs pods on the pod network report in ``status.podIPs`` (pods that ended hold none)."""
    node = spec.get("nodeName")
    if (not node or spec.get("hostNetwork")
            or status.get("phase") in ("Succeeded", "Failed")):
        return {}
    ips = {str(a.get("ip")) for a in status.get("podIPs") or [] if a.get("ip")}
    if status.get("podIP"):
        ips.add(str(status["podIP"]))
    if not ips:
        return {}
    return {node: (namespace or "", name, uid or "", tuple(sorted(ips)))}


@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL_PODIP)
def pod_ips(spec: kopf.Spec, name: str, namespace: str | None,
            **_: Any) -> dict[str, tuple[str, str, str, str]]:
    node = spec.get("nodeName")
    if not node:
        return {}
    return {node: (spec.get("ip", ""), namespace or "", name, spec.get("podUID", ""))}


# Exclusive-ENI pods (those that opted in), namespaces' labels and the policies, for the
# exclusive rounds (exclusive_reconcile.py): what they read, held as kopf lists them.

def _pod_fields(body: kopf.Body) -> dict[str, Any]:
    """The parts of a pod an exclusive round reads."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    keep = ("name", "namespace", "uid", "labels", "annotations", "ownerReferences",
            "deletionTimestamp")
    return {"metadata": {k: meta[k] for k in keep if k in meta},
            "spec": {"nodeName": spec.get("nodeName"), "hostNetwork": spec.get("hostNetwork"),
                     "containers": [{"name": c.get("name"), "resources": c.get("resources")}
                                    for c in spec.get("containers") or []]},
            "status": {"phase": (body.get("status") or {}).get("phase"),
                       "conditions": [c for c in (body.get("status") or {}).get("conditions")
                                      or [] if c.get("type") == contract.CONDITION_EXCLUSIVE_ENI]}}


@kopf.index("pods")
def exclusive_pods(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    node = spec.get("nodeName")
    if not node or spec.get("hostNetwork") or not wants_exclusive(body):
        return {}
    return {node: _pod_fields(body)}


@kopf.index("namespaces")
def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, Any]:
    return {name: dict(labels)}


@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL_EXCLUSIVE_POLICY)
def exclusive_policies(name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
    return {name: {"metadata": {"name": name}, "spec": dict(spec)}}


def exclusive_inputs() -> tuple[list[Any], dict[str, dict[str, str]], list[Any], set[str]]:
    """Pods, namespace labels, policies and the nodes of the pods, from the indices (event
    loop thread)."""
    idx = _rt().indices
    pods_idx = idx.get("exclusive_pods") or {}
    pods = [p for node in pods_idx for p in pods_idx[node]]
    ns_idx = idx.get("namespace_labels") or {}
    labels = {ns: dict(v) for ns in ns_idx for v in ns_idx[ns]}
    pol_idx = idx.get("exclusive_policies") or {}
    policies = [p for name in pol_idx for p in pol_idx[name]]
    return pods, labels, policies, set(pods_idx)


def exclusive_round(rt: Runtime, pods: list[Any], labels: dict[str, dict[str, str]],
                    policies: list[Any], pod_nodes: set[str]) -> bool:
    """One exclusive round (reconcile thread pool); True while something is on its way
    (the next round comes sooner). Nodes take part once their shared round has read their
    configuration: those with slots, those with exclusive pods, and those that published
    slots before (so a lowered split reaches the scheduler)."""
    assert rt.exclusive is not None
    kube = rt.reconciler.kube
    facts = []
    for name, mem in list(rt.reconciler.memory.items()):
        if mem.info is None:
            continue
        node = kube.node(name) if mem.exclusive_split <= 0 and name not in pod_nodes else None
        published = ((node or {}).get("status") or {}).get("capacity") or {}
        if mem.exclusive_split > 0 or name in pod_nodes or (
                contract.RESOURCE_EXCLUSIVE_ENI in published):
            facts.append(NodeFacts(name, mem.exclusive_split, mem.shared_enis))
    if not facts and not pods and not rt.exclusive.known:
        return False  # nothing exclusive anywhere: no cloud call
    plan = rt.exclusive.round(pods, labels, policies, facts)
    return bool(plan.actions) or rt.exclusive.settling


async def _exclusive_loop(rt: Runtime) -> None:
    """Exclusive rounds, one at a time: on the events that matter (debounced), every
    half second while ENIs are on their way, else every ``exclusive_interval``."""
    loop = asyncio.get_running_loop()
    wake = rt.exclusive_wake = asyncio.Event()
    while True:
        wake.clear()
        busy = False
        try:
            busy = await loop.run_in_executor(rt.scheduler.pool, exclusive_round, rt,
                                              *exclusive_inputs())
        except NotLeader as e:
            log.error("%s", e)
            if rt.scheduler.on_not_leader:
                rt.scheduler.on_not_leader()
            return
        except Exception:
            log.exception("exclusive-ENI round failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 0.5 if busy else rt.exclusive_interval)
        await asyncio.sleep(rt.debounce)


def _exclusive_poke() -> None:
    wake = _rt().exclusive_wake
    if wake is not None:
        wake.set()


# -- lifecycle -----------------------------------------------------------------------------

# The Nodes, ENIPools and ENI resources themselves, for the rounds (objects.py): kopf runs
# these for every object and, at start, for every listed one before any handler.

def _keep(kind: str, body: kopf.Body) -> dict[str, Any]:
    cache = _rt().reconciler.kube.cache
    if cache is not None:
        cache.seen(kind, dict(body))
    return {}


@kopf.index("nodes")
def node_objects(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _keep("nodes", body)


@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL)
def pool_objects(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _keep("enipools", body)


@kopf.index(contract.GROUP, contract.VERSION, contract.PLURAL_ENI)
def eni_objects(body: kopf.Body, **_: Any) -> dict[str, Any]:
    return _keep("enis", body)


def _gone(kind: str, body: kopf.Body) -> None:
    cache = _rt().reconciler.kube.cache
    if cache is not None:
        cache.forget(kind, dict(body))


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf talks to the apiserver with the very credentials of our own client (kubeconfig
    or in-cluster service account)."""
    cfg = _rt().api.configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    token = auth.split(" ", 1)[1] if auth and " " in auth else auth
    return kopf.ConnectionInfo(
        server=cfg.host, ca_path=cfg.ssl_ca_cert or None, insecure=not cfg.verify_ssl,
        token=token or None, certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None, username=cfg.username or None,
        password=cfg.password or None)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.worker_limit = 64
    # contract.FINALIZER is ours, handled by the reconciler; kopf must keep its own name,
    # or it would strip ours from objects it has no deletion handler for.
    rt = _rt()
    rt.tasks.append(asyncio.create_task(rt.scheduler.run(), name="scheduler"))
    rt.tasks.append(asyncio.create_task(_gc_loop(rt), name="gc"))
    if rt.public_ips is not None:
        rt.tasks.append(asyncio.create_task(_public_ip_loop(rt), name="public-ips"))
    if rt.exclusive is not None:
        rt.tasks.append(asyncio.create_task(_exclusive_loop(rt), name="exclusive-enis"))


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    rt = _rt()
    for t in rt.tasks:
        t.cancel()
    await asyncio.get_running_loop().run_in_executor(None, rt.scheduler.stop)


async def _gc_loop(rt: Runtime) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(rt.gc_interval)
        try:
            report = await loop.run_in_executor(rt.scheduler.pool, rt.gc.collect)
        except Exception:
            log.exception("garbage collection failed")
            continue
        cache = rt.reconciler.kube.cache
        for node in report["orphans"]:
            if cache is not None:  # gone from the server, whatever the watch said
                cache.forget("nodes", {"metadata": {"name": node}})
            rt.scheduler.poke(node)
        if report["deleted"]:
            log.info("gc: %s", report)


async def _public_ip_loop(rt: Runtime) -> None:
    """Public-IP rounds, one at a time, on the reconcile pool; the first one at once (the
    release handshake holds every IP until it has seen the cloud)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            await loop.run_in_executor(rt.scheduler.pool, rt.public_ips.round)
        except Exception:
            log.exception("public-IP round failed")
        await asyncio.sleep(rt.public_ip_interval)


def _capture(kwargs: dict[str, Any]) -> None:
    """Every handler starts here; kopf runs none before every index is complete, so the
    object cache is complete too from now on."""
    cache = _rt().reconciler.kube.cache
    if cache is not None:
        cache.ready = True
    idx = _rt().indices
    for key in ("pending_pods", "pod_addrs", "pod_ips", "exclusive_pods", "namespace_labels",
                "exclusive_policies"):
        if key in kwargs:
            idx[key] = kwargs[key]


# -- events --------------------------------------------------------------------------------

def node_digest(body: Any) -> str:
    """What a node's round reads of its Node: spec (providerID), labels, annotations but
    the max-pods one the round writes itself, deletion. Not status: kubelet rewrites it
    every few seconds on every node, which would be a round per node each time."""
    meta = body.get("metadata") or {}
    notes = {k: v for k, v in (meta.get("annotations") or {}).items()
             if k != contract.ANNOTATION_MAX_PODS}
    return hashlib.sha1(json.dumps(
        [dict(body.get("spec") or {}), dict(meta.get("labels") or {}), notes,
         meta.get("deletionTimestamp"), meta.get("uid")], sort_keys=True,
        default=str).encode()).hexdigest()


@kopf.on.event("nodes")
async def node_event(name: str, type: str | None, body: kopf.Body, **kw: Any) -> None:
    _capture(kw)
    rt = _rt()
    if type == "DELETED":
        _gone("nodes", body)
        rt.node_digests.pop(name, None)
        rt.scheduler.poke(name, 0.0)
        return
    digest = node_digest(body)
    if type in (None, "ADDED") or rt.node_digests.get(name) != digest:
        rt.node_digests[name] = digest
        rt.scheduler.poke(name, 0.0 if type in (None, "ADDED") else 0.1)


@kopf.on.event("pods")
async def pod_event(spec: kopf.Spec, body: kopf.Body, **kw: Any) -> None:
    _capture(kw)
    node = spec.get("nodeName")
    if node and not spec.get("hostNetwork"):
        _rt().scheduler.poke(node, _rt().debounce)
        if wants_exclusive(body):
            _exclusive_poke()


@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL_EXCLUSIVE_POLICY)
async def exclusive_policy_event(**kw: Any) -> None:
    _capture(kw)
    _exclusive_poke()


@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL_PODIP)
async def podip_event(spec: kopf.Spec, **kw: Any) -> None:
    _capture(kw)
    _rt().scheduler.poke(spec.get("nodeName", ""), _rt().debounce)


@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL)
async def pool_event(name: str, type: str | None, body: kopf.Body,
                     **kw: Any) -> None:
    """Only what others write matters here (spec, the agent's acknowledgements): the
    operator's own status writes would otherwise wake it in a loop."""
    _capture(kw)
    rt = _rt()
    if type == "DELETED":
        _gone("enipools", body)
        rt.digests.pop(name, None)
        rt.scheduler.poke(name, 0.5)
        return
    status = body.get("status") or {}
    agent = {k: v for k, v in (status.get("agent") or {}).items() if k != "heartbeat"}
    digest = hashlib.sha1(json.dumps([dict(body.get("spec") or {}), agent],
                                     sort_keys=True).encode()).hexdigest()
    if rt.digests.get(name) != digest:
        rt.digests[name] = digest
        rt.scheduler.poke(name, 0.05)


@kopf.on.event(contract.GROUP, contract.VERSION, contract.PLURAL_ENI)
async def eni_event(spec: kopf.Spec, meta: kopf.Meta, type: str | None, body: kopf.Body,
                    **kw: Any) -> None:
    """A deleted ENI resource: its node's round runs the finalizer (cloud cleanup). One
    without its node's label (the agent would not see it) gets it at once: every ENI is
    listed when the operator starts, so older ones are labelled then."""
    _capture(kw)
    if type == "DELETED":
        _gone("enis", body)
    if type == "DELETED" or meta.get("deletionTimestamp"):
        _rt().scheduler.poke(spec.get("nodeName", ""), 0.0)
        return
    node = spec.get("nodeName")
    if node and (meta.get("labels") or {}).get(contract.LABEL_NODE) != node:
        kube = _rt().reconciler.kube
        eni = {"metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
               "spec": {"nodeName": node}}
        try:
            await asyncio.get_running_loop().run_in_executor(None, kube.ensure_node_label, eni)
        except Exception as e:  # the next event or GC pass tries again
            log.warning("labelling ENI %s: %s", meta.get("name"), e)
