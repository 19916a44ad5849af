"""A kubelet stand-in for the demo and the end-to-end tests: one per emulated node.

It registers a Node (providerID, instance-type and zone labels, capacity), keeps it
Ready with heartbeats, and for every pod bound to the node does what kubelet and
the container runtime do for networking: create a network namespace, run the CNI
conflist (ADD) exactly as a runtime does (``cniexec``), report the pod Running with
its IP; on deletion run DEL, remove the namespace and finish the delete. No
containers run: the pod's network namespace is the pod, and tests send real
packets from it with ``ip netns exec``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from cniexec import CNIError, CNIRuntime, pod_ip

log = logging.getLogger("kubelet-standin")
MAX_PODS_ANNOTATION = contract.ANNOTATION_MAX_PODS


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def netns_name(uid: str) -> str:
    return f"pod-{uid[:13]}"


@dataclass
class KubeletStandin:
    kubeconfig: str
    node_name: str
    runtime: CNIRuntime
    provider_id: str = ""
    node_ip: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    pods_capacity: int = 110
    workers: int = 8
    heartbeat_s: float = 10.0
    follow_max_pods: bool = True
    on_event: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        api_client = config.new_client_from_config(config_file=self.kubeconfig)
        self.core = client.CoreV1Api(api_client)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"kl-{self.node_name}")
        self._lock = threading.Lock()
        self._ready: dict[str, str] = {}  # pod uid -> IP (network set up)
        self._busy: set[str] = set()  # pod uids with a job in flight
        self._errors: dict[str, str] = {}
        self._threads: list[threading.Thread] = []

    # -- node ----------------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        cond = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet stand-in is posting ready status",
                "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}
        capacity = {"cpu": "16", "memory": "64Gi", "pods": str(self.pods_capacity)}
        status: dict[str, Any] = {"conditions": [cond], "capacity": capacity,
                                  "allocatable": capacity}
        if self.node_ip:
            status["addresses"] = [{"type": "InternalIP", "address": self.node_ip},
                                   {"type": "Hostname", "address": self.node_name}]
        return status

    def register(self) -> None:
        labels = {"kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                  **self.labels}
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node_name, "labels": labels},
                "spec": {"providerID": self.provider_id} if self.provider_id else {}}
        try:
            self.core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
        self.core.patch_node_status(self.node_name, {"status": self._node_status()})

    def set_pods_capacity(self, pods: int) -> None:
        self.pods_capacity = pods
        self.core.patch_node_status(self.node_name, {"status": self._node_status()})

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(Exception):
                self._follow_max_pods()
                self.core.patch_node_status(self.node_name, {"status": self._node_status()})

    def _follow_max_pods(self) -> None:
        """Like a kubelet started with ``--max-pods`` from eniway's figure: the node's pod
        capacity follows the annotation the operator publishes."""
        if not self.follow_max_pods:
            return
        node = self.core.read_node(self.node_name)
        value = (node.metadata.annotations or {}).get(MAX_PODS_ANNOTATION)
        if value and value.isdigit() and int(value) != self.pods_capacity:
            self.pods_capacity = int(value)
            self._emit(f"pod capacity set to {value} (eniway max-pods)")

    # -- pods ----------------------------------------------------------------------------

    def _emit(self, msg: str) -> None:
        log.info("%s: %s", self.node_name, msg)
        if self.on_event:
            self.on_event(f"[{self.node_name}] {msg}")

    def _submit(self, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._lock:
            if uid in self._busy:
                return
            self._busy.add(uid)
        self._pool.submit(self._handle, pod)

    def _handle(self, pod: Any) -> None:
        uid = pod.metadata.uid
        try:
            if pod.metadata.deletion_timestamp is not None:
                self._teardown(pod)
            elif uid not in self._ready and pod.status.phase in (None, "Pending"):
                self._setup(pod)
        except Exception as e:  # a failed sandbox is retried, like kubelet does
            msg = str(e)
            if self._errors.get(uid) != msg:
                self._errors[uid] = msg
                self._emit(f"{pod.metadata.namespace}/{pod.metadata.name}: {msg}")
                self._event(pod, "FailedCreatePodSandBox", msg)
            if not self._stop.is_set():
                threading.Timer(2.0, self._retry, args=(pod.metadata.namespace,
                                                        pod.metadata.name, uid)).start()
        finally:
            with self._lock:
                self._busy.discard(uid)

    def _retry(self, namespace: str, name: str, uid: str) -> None:
        if self._stop.is_set():
            return
        try:
            pod = self.core.read_namespaced_pod(name, namespace)
        except ApiException:
            pod = None
        if pod is not None and pod.metadata.uid == uid:
            self._submit(pod)
        elif uid in self._ready:
            self._teardown_uid(uid, namespace, name)

    def _cni_args(self, pod: Any) -> dict[str, str]:
        return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": pod.metadata.namespace,
                "K8S_POD_NAME": pod.metadata.name, "K8S_POD_UID": pod.metadata.uid,
                "K8S_POD_INFRA_CONTAINER_ID": pod.metadata.uid}

    def _setup(self, pod: Any) -> None:
        uid = pod.metadata.uid
        if pod.spec.host_network:
            ip = self.node_ip
        else:
            ns = netns_name(uid)
            subprocess.run(["ip", "netns", "add", ns], capture_output=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            t0 = time.monotonic()
            try:
                result = self.runtime.add(uid, f"/var/run/netns/{ns}", "eth0",
                                          self._cni_args(pod))
            except CNIError:
                # as a runtime does after a failed sandbox setup: DEL, then drop the netns
                with contextlib.suppress(Exception):
                    self.runtime.delete(uid, f"/var/run/netns/{ns}", "eth0", self._cni_args(pod))
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
                raise
            ip = pod_ip(result)
            self._emit(f"{pod.metadata.namespace}/{pod.metadata.name} -> {ip} "
                       f"({(time.monotonic() - t0) * 1000:.0f} ms)")
        self._ready[uid] = ip
        self._errors.pop(uid, None)
        now = _now()
        conds = [{"type": t, "status": "True", "lastTransitionTime": now}
                 for t in ("Initialized", "ContainersReady", "Ready", "PodScheduled")]
        status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                  "hostIP": self.node_ip or None, "startTime": now, "conditions": conds}
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace,
                                              {"status": status})

    def _teardown(self, pod: Any) -> None:
        self._teardown_uid(pod.metadata.uid, pod.metadata.namespace, pod.metadata.name, pod)
        with contextlib.suppress(ApiException):
            self.core.delete_namespaced_pod(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions={"uid": pod.metadata.uid}))

    def _teardown_uid(self, uid: str, namespace: str, name: str, pod: Any = None) -> None:
        ns = netns_name(uid)
        if pod is None or not pod.spec.host_network:
            args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name,
                    "K8S_POD_UID": uid, "K8S_POD_INFRA_CONTAINER_ID": uid}
            self.runtime.delete(uid, f"/var/run/netns/{ns}", "eth0", args)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self._ready.pop(uid, None) is not None:
            self._emit(f"{namespace}/{name} released")

    def _event(self, pod: Any, reason: str, message: str) -> None:
        body = {"metadata": {"generateName": f"{pod.metadata.name}."},
                "involvedObject": {"kind": "Pod", "name": pod.metadata.name,
                                   "namespace": pod.metadata.namespace,
                                   "uid": pod.metadata.uid},
                "reason": reason, "message": message[:1000], "type": "Warning",
                "source": {"component": "kubelet", "host": self.node_name},
                "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1}
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(pod.metadata.namespace, body)

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self._stop.is_set():
            try:
                pods = self.core.list_pod_for_all_namespaces(field_selector=selector)
                seen = set()
                for pod in pods.items:
                    seen.add(pod.metadata.uid)
                    self._submit(pod)
                for uid in list(self._ready):  # deleted while we were not watching
                    if uid not in seen:
                        self._pool.submit(self._teardown_uid, uid, "", "")
                w = watch.Watch()
                for ev in w.stream(self.core.list_pod_for_all_namespaces,
                                   field_selector=selector,
                                   resource_version=pods.metadata.resource_version,
                                   timeout_seconds=30):
                    if self._stop.is_set():
                        w.stop()
                        break
                    pod = ev["object"]
                    if ev["type"] == "DELETED":
                        if pod.metadata.uid in self._ready:
                            self._pool.submit(self._teardown_uid, pod.metadata.uid,
                                              pod.metadata.namespace, pod.metadata.name, pod)
                    else:
                        self._submit(pod)
            except Exception as e:  # reconnect, as kubelet's informers do
                if not self._stop.is_set():
                    log.warning("%s: pod watch: %s", self.node_name, e)
                    time.sleep(1)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> KubeletStandin:
        self.register()
        for target in (self._heartbeat, self._watch_pods):
            t = threading.Thread(target=target, name=f"kl-{self.node_name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def pod_ips(self) -> dict[str, str]:
        return dict(self._ready)

    def stop(self, teardown: bool = True) -> None:
        """Stop; with ``teardown`` also run DEL for every pod still set up."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if teardown:
            for uid in list(self._ready):
                with contextlib.suppress(Exception):
                    self._teardown_uid(uid, "", "")
