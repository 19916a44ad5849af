"""Kubernetes access for the reconciler: ENI and ENIPool objects, Nodes, the config map,
and Events on Nodes. Synchronous (called from worker threads), one place for the paths."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator import metrics
from eniway_operator.objects import ObjectCache

log = logging.getLogger(__name__)
JSON = dict[str, Any]
COMPONENT = "eniway-operator"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_config(kubeconfig: str | None, connections: int = 0) -> client.ApiClient:
    """A client for the kubeconfig (else in-cluster, else the default kubeconfig) keeping
    up to ``connections`` connections open (0: the client's default, 5 per CPU): threads
    beyond the pool's size open a new TLS connection per request."""
    if kubeconfig:
        api = config.new_client_from_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = client.ApiClient()
    if connections > (api.configuration.connection_pool_maxsize or 0):
        api.configuration.connection_pool_maxsize = connections
        api.rest_client = rest.RESTClientObject(api.configuration)
    return api


def request_kind(method: str, url: str) -> tuple[str, str]:
    """(verb, resource) of a request: ("get", "enipools"), ("list", "enis"),
    ("patch", "enipools/status")..."""
    segs = [p for p in urllib.parse.urlsplit(url).path.split("/") if p]
    segs = segs[2:] if segs[:1] == ["api"] else segs[3:]  # /api/v1 or /apis/group/version
    if segs[:1] == ["namespaces"] and len(segs) > 2:
        segs = segs[2:]
    resource = segs[0] if segs else ""
    if len(segs) == 3:
        resource += "/" + segs[2]
    verb = method.lower()
    if verb == "get" and len(segs) == 1:
        verb = "list"
    return verb, resource


def count_requests(api: client.ApiClient) -> client.ApiClient:
    """Counts every request of ``api`` in ``eniway_kube_requests_total``."""
    call = api.call_api

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        metrics.KUBE_REQUESTS.labels(*request_kind(method, url)).inc()
        return call(method, url, *args, **kwargs)

    setattr(api, "call_api", counted)  # noqa: B010 - an instance attribute, not the class's
    return api


class Kube:
    """The calls the operator makes. ENI and ENIPool are cluster scoped custom objects.
    ``fence`` (set once leading) is asked before every write: a deposed leader's round
    stops at its next write instead of racing the new leader."""

    def __init__(self, api: client.ApiClient, namespace: str = "kube-system",
                 fence: Callable[[str], None] | None = None,
                 cache: ObjectCache | None = None) -> None:
        self.fence = fence
        self.cache = cache  # what kopf watches, plus our writes (see objects.py)
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self._events: dict[str, tuple[str, int]] = {}
        self._events_lock = threading.Lock()

    def _write(self, what: str) -> None:
        if self.fence is not None:
            self.fence(what)

    def _saw(self, kind: str, answer: Any) -> Any:
        """An object the API server answered a write with: the newest version we know."""
        if self.cache is not None and isinstance(answer, dict) and answer.get(
                "kind") != "Status" and (answer.get("metadata") or {}).get("name"):
            self.cache.seen(kind, answer)
        return answer

    def _deleted(self, kind: str, answer: Any) -> None:
        if self.cache is not None and isinstance(answer, dict) and answer.get(
                "kind") != "Status" and (answer.get("metadata") or {}).get("uid"):
            if (answer["metadata"].get("finalizers") or []):
                self.cache.seen(kind, answer)  # deletion waits for another finalizer
            else:
                self.cache.forget(kind, answer)

    def _cached(self) -> ObjectCache | None:
        return self.cache if self.cache is not None and self.cache.ready else None

    # -- what a round reads: from the cache once it is complete, else from the server ----
    def node(self, name: str) -> JSON | None:
        """The Node; absent from the cache is confirmed with a GET (a node that looks gone
        gets its ENIs released)."""
        c = self._cached()
        got = c.get("nodes", name) if c is not None else None
        return got if got is not None else self.get_node(name)

    def pool(self, name: str) -> JSON | None:
        """The ENIPool; absent from the complete cache is absent (a new node's: creating
        it is the next step, and a create that finds one there reads it)."""
        c = self._cached()
        if c is not None:
            return c.get("enipools", name)
        return self.get_pool(name)

    def enis_of(self, node: str) -> list[JSON]:
        """The node's ENI resources (by spec.nodeName from the cache; by label from the
        server until the cache is complete)."""
        c = self._cached()
        return c.enis_of(node) if c is not None else self.list_enis(node)

    # -- nodes --------------------------------------------------------------------------
    def get_node(self, name: str) -> JSON | None:
        try:
            node: JSON = self.api.sanitize_for_serialization(self.core.read_node(name))
            return node
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def annotate_node(self, name: str, annotations: Mapping[str, str | None]) -> None:
        self._write("annotate node")
        got = self.core.patch_node(name, {"metadata": {"annotations": dict(annotations)}})
        self._saw("nodes", self.api.sanitize_for_serialization(got))

    def publish_node_resource(self, name: str, resource: str, quantity: str) -> None:
        """An extended resource in the Node's status capacity and allocatable (what the
        scheduler counts); the answer refreshes the cache."""
        self._write(f"node {name} status")
        node = self.core.patch_node_status(name, {"status": {
            "capacity": {resource: quantity}, "allocatable": {resource: quantity}}})
        self._saw("nodes", self.api.sanitize_for_serialization(node))

    def set_pod_condition(self, namespace: str, name: str, condition: JSON) -> None:
        """One condition in the pod's status (merged by type; kubelet keeps conditions it
        does not own). A pod gone meanwhile is fine."""
        self._write(f"pod {namespace}/{name} status")
        try:
            self.core.patch_namespaced_pod_status(name, namespace,
                                                  {"status": {"conditions": [condition]}})
        except ApiException as e:
            if e.status != 404:
                raise

    def node_names(self) -> set[str]:
        return {str(n.metadata.name) for n in self.core.list_node().items if n.metadata}

    # -- config map ---------------------------------------------------------------------
    def get_configmap(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            cm = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(cm.data or {})

    # -- ENIPool ------------------------------------------------------------------------
    def _pool_args(self) -> tuple[str, str, str]:
        return contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL

    def get_pool(self, name: str) -> JSON | None:
        try:
            return cast(JSON, self.custom.get_cluster_custom_object(*self._pool_args(), name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_pools(self) -> list[JSON]:
        got = cast(JSON, self.custom.list_cluster_custom_object(*self._pool_args()))
        return cast(list[JSON], got["items"])

    def create_pool(self, name: str, spec: JSON, owner: JSON | None) -> JSON:
        self._write("create ENIPool")
        meta: JSON = {"name": name, "labels": {contract.LABEL_NODE: name}}
        if owner:
            meta["ownerReferences"] = [{
                "apiVersion": "v1", "kind": "Node", "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"]}]
        body = {"apiVersion": contract.API_VERSION, "kind": contract.KIND_ENIPOOL,
                "metadata": meta, "spec": spec}
        try:
            return cast(JSON, self._saw("enipools", self.custom.create_cluster_custom_object(
                *self._pool_args(), body)))
        except ApiException as e:
            if e.status == 409:
                got = self.get_pool(name)
                if got is not None:
                    return got
            raise

    def patch_pool(self, name: str, patch: JSON) -> JSON:
        self._write("patch ENIPool")
        return cast(JSON, self._saw("enipools", self.custom.patch_cluster_custom_object(
            *self._pool_args(), name, patch)))

    def patch_pool_status(self, name: str, status: JSON) -> None:
        self._write("patch ENIPool status")
        self._saw("enipools", self.custom.patch_cluster_custom_object_status(
            *self._pool_args(), name, {"status": status}))

    def delete_pool(self, name: str) -> None:
        self._write("delete ENIPool")
        try:
            self._deleted("enipools",
                          self.custom.delete_cluster_custom_object(*self._pool_args(), name))
        except ApiException as e:
            if e.status != 404:
                raise

    # -- witnesses of held IPs -------------------------------------------------------------
    def held_ips(self, node: str) -> set[str]:
        """IPs something on ``node`` holds, read now: PodIPs and the pods' own
        ``status.podIPs`` (pods that ended hold none)."""
        podips = cast(JSON, self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_PODIP,
            label_selector=f"{contract.LABEL_NODE}={node}"))
        held = {str(p["spec"].get("ip")) for p in podips["items"] if (p.get("spec") or {})
                .get("ip")}
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")
        for pod in pods.items:
            st = pod.status
            if st is None or st.phase in ("Succeeded", "Failed"):
                continue
            held.update(a.ip for a in st.pod_ips or [] if a.ip)
            if st.pod_ip:
                held.add(st.pod_ip)
        return held

    # -- ENI ----------------------------------------------------------------------------
    def _eni_args(self) -> tuple[str, str, str]:
        return contract.GROUP, contract.VERSION, contract.PLURAL_ENI

    def list_enis(self, node: str | None = None) -> list[JSON]:
        selector = f"{contract.LABEL_NODE}={node}" if node else None
        got = cast(JSON, self.custom.list_cluster_custom_object(
            *self._eni_args(), label_selector=selector))
        return cast(list[JSON], got["items"])

    def get_eni(self, name: str) -> JSON | None:
        try:
            return cast(JSON, self.custom.get_cluster_custom_object(*self._eni_args(), name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create_eni(self, name: str, node: str, spec: JSON, status: JSON | None) -> JSON:
        """Create the record (and write ``status``, unless None: the caller writes it)."""
        self._write("create ENI")
        body = {"apiVersion": contract.API_VERSION, "kind": contract.KIND_ENI,
                "metadata": {"name": name, "finalizers": [contract.FINALIZER],
                             "labels": {contract.LABEL_NODE: node}},
                "spec": spec}
        try:
            obj = cast(JSON, self._saw("enis", self.custom.create_cluster_custom_object(
                *self._eni_args(), body)))
        except ApiException as e:
            if e.status != 409:
                raise
            obj = self.get_eni(name) or {}
        if status is not None:
            self.patch_eni_status(name, status)
        return obj

    def patch_eni_status(self, name: str, status: JSON) -> None:
        self._write("patch ENI status")
        self._saw("enis", self.custom.patch_cluster_custom_object_status(
            *self._eni_args(), name, {"status": status}))

    def patch_eni_spec(self, name: str, spec: JSON) -> None:
        self._write("patch ENI spec")
        self._saw("enis", self.custom.patch_cluster_custom_object(
            *self._eni_args(), name, {"spec": spec}))

    def ensure_node_label(self, eni: JSON) -> bool:
        """Every ENI resource carries its node's label (each agent watches only its own
        node's); one without it, or with another node's, gets it from spec.nodeName.
        True when it had to be written."""
        node = (eni.get("spec") or {}).get("nodeName") or ""
        meta = eni.get("metadata") or {}
        if not node or (meta.get("labels") or {}).get(contract.LABEL_NODE) == node:
            return False
        self._write("label ENI")
        try:
            self._saw("enis", self.custom.patch_cluster_custom_object(
                *self._eni_args(), meta["name"],
                {"metadata": {"labels": {contract.LABEL_NODE: node}}}))
        except ApiException as e:
            if e.status != 404:
                raise
            return False
        log.info("ENI %s: labelled with its node %s", meta["name"], node)
        return True

    def release_eni(self, name: str) -> None:
        """Drop our finalizer and delete the resource (the cloud side is already done)."""
        self._write("release ENI")
        obj = self.get_eni(name)
        if obj is None:
            if self.cache is not None:
                self.cache.forget("enis", {"metadata": {"name": name}})
            return
        fins = [f for f in obj["metadata"].get("finalizers") or [] if f != contract.FINALIZER]
        if len(fins) != len(obj["metadata"].get("finalizers") or []):
            try:
                self.custom.patch_cluster_custom_object(
                    *self._eni_args(), name,
                    {"metadata": {"finalizers": fins,
                                  "resourceVersion": obj["metadata"]["resourceVersion"]}})
            except ApiException as e:
                if e.status not in (404, 409):
                    raise
                if e.status == 409:
                    return self.release_eni(name)
        try:
            self.custom.delete_cluster_custom_object(*self._eni_args(), name)
        except ApiException as e:
            if e.status != 404:
                raise
        if self.cache is not None:
            self.cache.forget("enis", obj)  # released: rounds no longer see it

    # -- events -------------------------------------------------------------------------
    def node_event(self, node: str, reason: str, message: str, warning: bool = True,
                   uid: str = "", pool_uid: str = "") -> None:
        """An Event on the Node and, given its uid, the same on the node's ENIPool (where
        ``kubectl describe enipool`` shows it)."""
        self.event({"kind": "Node", "name": node, "uid": uid or node, "apiVersion": "v1"},
                   reason, message, warning)
        if pool_uid:
            self.event({"kind": contract.KIND_ENIPOOL, "name": node, "uid": pool_uid,
                        "apiVersion": contract.API_VERSION}, reason, message, warning)

    def event(self, involved: JSON, reason: str, message: str, warning: bool = True) -> None:
        """An Event on ``involved``: in its namespace, or in default for a cluster-scoped
        object (as the kubelet does for Nodes); repeats of the same reason and message bump
        the count instead of piling up."""
        obj = involved["name"]
        kind = str(involved["kind"]).lower()
        key = hashlib.sha1(f"{kind}/{obj}/{reason}/{message}".encode()).hexdigest()[:12]
        name = f"{obj}.eniway.{key}"
        ts = now_iso()
        with self._events_lock:
            _, count = self._events.get(name, ("", 0))
            count += 1
            self._events[name] = (ts, count)
        ns = str(involved.get("namespace") or "default")
        try:
            if count > 1:
                try:
                    self.core.patch_namespaced_event(
                        name, ns, {"count": count, "lastTimestamp": ts})
                    return
                except ApiException as e:
                    if e.status != 404:
                        raise
            body = {
                "metadata": {"name": name, "namespace": ns},
                "involvedObject": dict(involved),
                "reason": reason, "message": message[:1000],
                "type": "Warning" if warning else "Normal",
                "source": {"component": COMPONENT},
                "firstTimestamp": ts, "lastTimestamp": ts, "count": count,
                "reportingComponent": COMPONENT, "reportingInstance": COMPONENT,
            }
            try:
                self.core.create_namespaced_event(ns, body)  # type: ignore[arg-type]
            except ApiException as e:
                if e.status != 409:
                    raise
                self.core.patch_namespaced_event(name, ns, {"count": count, "lastTimestamp": ts})
        except Exception as e:  # an Event is best effort: never fail a reconcile for it
            log.warning("event %s on %s %s not recorded: %s", reason, kind, obj, e)
