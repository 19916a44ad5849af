"""Test and benchmark support: run the operator as a child process, and an agent double.

The agent double stands in for the node agent through the very resources the agent uses
(common contract): it gives pending pods IPs from InUse ENIs by creating PodIPs, frees them
when pods go, and answers the release handshake in ENIPool ``status.agent`` (acknowledging
only listed IPs no pod holds, never handing out a listed IP). Tests can hold back or withdraw
acknowledgements. It also records any violation of invariants 1 and 2 it can see.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes.client.rest import ApiException

from cni_plugin import contract
from eniway_operator.cloud.backoff import Backoff, RetryPolicy

JSON = dict[str, Any]
# Retries for provider tests: the real policy's shape with short back-offs.
FAST_RETRY = RetryPolicy(throttled=Backoff(0.05, 0.2, 8), server=Backoff(0.01, 0.05, 4))
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_provider(handle: Any) -> Any:
    """Give an emulator handle (``eniway_cloudsim.testing.SimHandle``) its
    ``provider(**kw)``: an AliyunProvider pointed at it with the handle's key pair."""
    from .cloud.aliyun import AliyunProvider
    from .cloud.credentials import StaticCredentials

    def provider(**kwargs: Any) -> AliyunProvider:
        kwargs.setdefault("credentials", StaticCredentials(handle.access_key_id,
                                                           handle.access_key_secret))
        return AliyunProvider(region_id=handle.region, endpoint=handle.endpoint,
                              protocol="http", **kwargs)

    handle.provider = provider
    return handle


def _child_setup() -> None:
    os.setpgrp()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.2, *,
             ignore: tuple[type[BaseException], ...] = (),
             detail: Callable[[], str] | None = None) -> Any:
    """Poll ``cond`` until truthy and return its value; the one polling loop of the
    tests, benchmarks and demo. Exceptions of a type in ``ignore`` count as "not yet"
    (transient API errors); ``detail`` adds context (a log tail) to the TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = cond()
        except ignore as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what} (last: {last!r}){extra}")
        time.sleep(interval)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {"name{labels}": value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?(?:\{.*\})?)\s+(\S+)$", line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = float(m.group(2))
    return out


class OperatorProcess:
    """``python -m eniway_operator.main`` with the given flags, logging to a file."""

    def __init__(self, kubeconfig: str | Path, cluster_id: str, endpoint: str, region: str,
                 namespace: str, configmap: str, access_key: tuple[str, str],
                 log_path: str | Path, extra: Sequence[str] = (), identity: str = "",
                 cloud: str = "cloudsim") -> None:
        """``cloud`` "aws": the EC2 dialect through boto3 (``region`` the EC2 region, the
        key through boto3's environment chain)."""
        self.metrics_port = free_port()
        self.log_path = Path(log_path)
        self.identity = identity or f"op-{self.metrics_port}"
        url = endpoint if "://" in endpoint else f"http://{endpoint}"
        self.cmd = [sys.executable, "-m", "eniway_operator.main",
                    f"--kubeconfig={kubeconfig}", f"--cluster-id={cluster_id}",
                    f"--cloud={cloud}",
                    f"--cloud-endpoint={url if cloud == 'aws' else endpoint}",
                    f"--region={region}",
                    f"--namespace={namespace}", f"--configmap={configmap}",
                    f"--metrics-port={self.metrics_port}", "--metrics-host=127.0.0.1",
                    f"--identity={self.identity}", *extra]
        keys = ({"AWS_ACCESS_KEY_ID": access_key[0], "AWS_SECRET_ACCESS_KEY": access_key[1]}
                if cloud == "aws" else {"ALIBABA_CLOUD_ACCESS_KEY_ID": access_key[0],
                                        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": access_key[1]})
        self.env = {**os.environ, **keys}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.env, preexec_fn=_child_setup)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                return parse_metrics(r.read().decode())
        except OSError:
            return {}

    def cloud_calls(self, api: str = "") -> float:
        total = 0.0
        for k, v in self.metrics().items():
            if k.startswith("eniway_cloud_calls_total{") and (not api or f'api="{api}"' in k):
                total += v
        return total

    def is_leader(self) -> bool:
        return self.metrics().get("eniway_leader", 0.0) == 1.0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _release() -> str:
    """The version a double reports: this release's, as a real agent of it would."""
    from importlib.metadata import version
    return version("eniway")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AgentDouble:
    """The node agent's side of the contract, for the given nodes, in a thread."""

    def __init__(self, api: client.ApiClient, nodes: Iterable[str], interval: float = 0.1,
                 namespace: str = "default") -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.nodes = set(nodes)
        self.interval = interval
        self.namespace = namespace
        self.ack = True  # acknowledge release requests at all
        self.refuse: set[str] = set()  # IPs never acknowledged (tests withdraw with this)
        self.gone_enis: set[str] = set()  # ENIs a test removed on purpose
        self.violations: list[str] = []
        self.allocations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}

    # -- control -------------------------------------------------------------------------
    def start(self) -> AgentDouble:
        self._thread = threading.Thread(target=self._loop, name="agent-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> AgentDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for node in sorted(self.nodes):
                try:
                    self.step(node)
                except ApiException as e:
                    if e.status not in (404, 409):
                        self.violations.append(f"api error {e.status} {e.reason}: {e.body}")
                except Exception as err:  # keep going: a test reads violations
                    self.violations.append(f"agent double error: {err!r}")
            self._stop.wait(self.interval)

    # -- one step ------------------------------------------------------------------------
    def podips(self, node: str) -> list[JSON]:
        got = cast(JSON, self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_PODIP))
        return [p for p in got["items"] if p["spec"].get("nodeName") == node]

    def step(self, node: str) -> None:
        with self._lock:
            self._step(node)

    def _step(self, node: str) -> None:
        try:
            pool = cast(JSON, self.custom.get_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node))
        except ApiException as e:
            if e.status == 404:
                return
            raise
        spec_release = (pool.get("spec") or {}).get("release") or {}
        release = set(spec_release.get("ips") or [])
        enis = cast(JSON, self.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_ENI,
            label_selector=f"{contract.LABEL_NODE}={node}"))["items"]
        usable: dict[str, str] = {}
        for eni in enis:
            if (eni.get("status") or {}).get("phase") != contract.PHASE_INUSE:
                continue
            if eni["metadata"].get("deletionTimestamp"):
                continue
            for entry in eni["status"].get("ips") or []:
                usable[entry["ip"]] = eni["metadata"]["name"]
        listed = cast(JSON, self.api.sanitize_for_serialization(
            self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}")))
        pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p
                for p in listed["items"]}
        podips = self.podips(node)
        held: dict[str, tuple[str, str]] = {}
        for pip in podips:
            key = (pip["metadata"]["namespace"], pip["metadata"]["name"])
            pod = pods.get(key)
            if pod is None or pod["metadata"]["uid"] != pip["spec"].get("podUID"):
                self.custom.delete_namespaced_custom_object(
                    contract.GROUP, contract.VERSION, key[0], contract.PLURAL_PODIP, key[1])
                continue
            ip = pip["spec"]["ip"]
            if ip not in usable and pip["spec"].get("eniId") not in self.gone_enis:
                self.violations.append(f"IP {ip} of pod {key} is no longer on an InUse ENI")
            if ip in held:
                self.violations.append(f"IP {ip} held by {held[ip]} and {key}")
            held[ip] = key
        have = set(held.values())
        acked = sorted(ip for ip in release if ip not in held and ip not in self.refuse) \
            if self.ack else []
        free = sorted(ip for ip in usable if ip not in held and ip not in release)
        for key, pod in sorted(pods.items()):
            if key in have or pod["spec"].get("hostNetwork") or \
                    pod["metadata"].get("deletionTimestamp"):
                continue
            if (pod.get("status") or {}).get("phase", "Pending") != "Pending" or not free:
                continue
            ip = free.pop(0)
            body = {"apiVersion": contract.API_VERSION, "kind": contract.KIND_PODIP,
                    "metadata": {"name": key[1], "namespace": key[0],
                                 "labels": {contract.LABEL_NODE: node}},
                    "spec": {"ip": ip, "eniId": usable[ip], "nodeName": node,
                             "podUID": pod["metadata"]["uid"], "containerId": "double",
                             "interface": "eth0", "netns": "/proc/0/ns/net",
                             "allocatedAt": _now()}}
            self.custom.create_namespaced_custom_object(
                contract.GROUP, contract.VERSION, key[0], contract.PLURAL_PODIP, body)
            held[ip] = key
            self.allocations += 1
        agent = {"acknowledged": acked, "allocated": sorted(held), "heartbeat": _now(),
                 contract.AGENT_RELEASE_TOKEN: spec_release.get(contract.RELEASE_TOKEN) or None,
                 "ready": True, "version": _release()}
        old = dict((pool.get("status") or {}).get("agent") or {})
        beat = time.monotonic() - self._beats.get(node, 0.0) > 5.0
        if beat or {k: v for k, v in old.items() if k != "heartbeat"} != {
                k: v for k, v in agent.items() if k != "heartbeat"}:
            self._beats[node] = time.monotonic()
            self.custom.patch_cluster_custom_object_status(
                contract.GROUP, contract.VERSION, contract.PLURAL_ENIPOOL, node,
                {"status": {"agent": agent}})

    def held(self, node: str) -> set[str]:
        return {p["spec"]["ip"] for p in self.podips(node)}


def make_pods(api: client.ApiClient, node: str, count: int, namespace: str = "default",
              prefix: str = "p") -> list[str]:
    core = client.CoreV1Api(api)
    names = []
    for i in range(count):
        name = f"{prefix}-{node}-{i}"
        core.create_namespaced_pod(namespace, {  # type: ignore[arg-type]
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "none"}],
                     "tolerations": [{"operator": "Exists"}]}})
        names.append(name)
    return names


def delete_pods(api: client.ApiClient, names: Iterable[str], namespace: str = "default") -> None:
    core = client.CoreV1Api(api)
    for n in names:
        with contextlib.suppress(ApiException):
            core.delete_namespaced_pod(n, namespace, grace_period_seconds=0)


def make_node(api: client.ApiClient, name: str, provider_id: str, instance_type: str,
              zone: str, annotations: Mapping[str, str] | None = None) -> None:
    client.CoreV1Api(api).create_node({  # type: ignore[arg-type]
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": dict(annotations or {}),
                     "labels": {"node.kubernetes.io/instance-type": instance_type,
                                "topology.kubernetes.io/zone": zone}},
        "spec": {"providerID": provider_id}})
