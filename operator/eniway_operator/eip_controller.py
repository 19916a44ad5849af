"""Public IPs for pods: one round observes the pods that ask for one (eip_spec), their
PodIPs and the EIPs, asks eip_plan what to do, makes the cloud calls and records the
outcome (PodIP ``status.publicIP`` and its ``PublicIP`` condition, Events on the pod).

A call that fails (quota, throttling, a busy EIP) leaves the pod running on its private
IP: the pod gets a Warning Event and the condition False with the cloud's code, and the
next round tries again. ``held_ips()`` tells the release handshake which private IPs still
carry an EIP; it is None until the first round has seen the cloud, and the handshake then
releases nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from cni_plugin import contract
from eniway_operator import eip_plan, eip_spec
from eniway_operator.cloud.base import CloudError, CloudProvider, PublicIp, Unauthorized
from eniway_operator.kube import Kube, now_iso, parse_time

log = logging.getLogger(__name__)
JSON = dict[str, Any]
CONDITION = "PublicIP"


class PublicIps:
    def __init__(self, kube: Kube, cloud: CloudProvider, cluster_id: str,
                 clock: Callable[[], float] = time.time, idle_resync: float = 60.0) -> None:
        """``idle_resync``: while no pod asks and the cloud showed no EIP of the cluster,
        it is described this rarely (leftovers are still collected)."""
        self.kube = kube
        self.cloud = cloud
        self.owned_tags = {contract.TAG_CREATOR: contract.TAG_CREATOR_VALUE,
                           contract.TAG_CLUSTER: cluster_id}
        self.clock = clock
        self._lock = threading.Lock()
        self._held: set[str] | None = None
        self._unclaimed_since: dict[str, float] = {}
        self._named: set[str] = set()  # EIPs pods named: disassociated when they go
        self._recorded: dict[str, tuple[str, str, str]] = {}  # key -> what status says
        self._spec_errors: dict[str, str] = {}
        self.idle_resync = idle_resync
        self._idle_since: float | None = None  # last describe that found nothing to do

    def held_ips(self) -> set[str] | None:
        with self._lock:
            return None if self._held is None else set(self._held)

    # --- observe -----------------------------------------------------------------------

    def _wants(self) -> tuple[list[eip_plan.Want], dict[str, JSON], dict[str, JSON]]:
        pods = self.kube.core.list_pod_for_all_namespaces(watch=False).items
        podips = cast(JSON, self.kube.custom.list_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.PLURAL_PODIP))["items"]
        by_key = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in podips}
        wants: list[eip_plan.Want] = []
        pod_refs: dict[str, JSON] = {}
        for pod in pods:
            md: Any = pod.metadata
            key = f"{md.namespace}/{md.name}"
            if md.deletion_timestamp or (pod.status and pod.status.phase in
                                          ("Succeeded", "Failed")):
                continue
            try:
                spec = eip_spec.parse(md.annotations)
            except eip_spec.SpecError as e:
                if self._spec_errors.get(key) != str(e):
                    self._spec_errors[key] = str(e)
                    self.kube.event(self._ref(md), "PublicIPInvalid", str(e))
                continue
            self._spec_errors.pop(key, None)
            if spec is None:
                continue
            pod_refs[key] = self._ref(md)
            podip = by_key.get(key)
            ip = eni = ""
            if podip is not None and (podip.get("spec") or {}).get("podUID") in ("", None,
                                                                                md.uid):
                ip, eni = podip["spec"].get("ip", ""), podip["spec"].get("eniId", "")
            wants.append(eip_plan.Want(key=key, spec=spec, ip=ip, eni_id=eni))
            if spec.allocation_id:
                self._named.add(spec.allocation_id)
        return wants, pod_refs, by_key

    @staticmethod
    def _ref(md: Any) -> JSON:
        return {"kind": "Pod", "apiVersion": "v1", "name": md.name, "namespace": md.namespace,
                "uid": md.uid}

    def _eips(self) -> list[PublicIp]:
        found = {e.allocation_id: e for e in self.cloud.describe_public_ips(
            tags=self.owned_tags)}
        named = sorted(self._named - set(found))
        if named:
            for e in self.cloud.describe_public_ips(named):
                found[e.allocation_id] = e
        return list(found.values())

    # --- one round -----------------------------------------------------------------------

    def round(self) -> None:
        wants, refs, podips = self._wants()
        now = self.clock()
        if not wants and self._idle_since is not None and \
                now - self._idle_since < self.idle_resync:
            return
        try:
            eips = self._eips()
        except (NotImplementedError, Unauthorized) as e:
            # a cloud without public IPs, or a key that may not see them: eniway cannot
            # have made any; what it knew before still holds
            log.warning("public IPs unavailable: %s", e)
            with self._lock:
                if self._held is None:
                    self._held = set()
            return
        self._idle_since = None if wants or eips else now
        plan = eip_plan.plan(wants, eips, self.owned_tags, now, self._unclaimed_since)
        with self._lock:  # before acting: an IP being associated is held from now on
            self._held = set(plan.held_ips)
        self._unclaimed_since = plan.unclaimed_since
        failures: dict[str, tuple[str, str]] = dict(plan.problems)
        for action in plan.actions:
            key = getattr(action, "key", "")
            try:
                self._act(action, refs.get(key), podips.get(key))
            except CloudError as e:
                log.warning("public IP %s: %s", type(action).__name__, e)
                if key in refs:
                    failures[key] = (e.code, f"{type(action).__name__}: {e.message}")
                    self.kube.event(refs[key], "PublicIPFailed",
                                    f"{type(action).__name__} failed ({e.code}): {e.message}; "
                                    "the pod keeps its private IP, retrying")
        gone = set(self._named) - {w.spec.allocation_id for w in wants}
        self._named -= {a for a in gone if not any(
            e.allocation_id == a and e.status != eip_plan.AVAILABLE for e in eips)}
        for key in set(self._recorded) - set(refs):
            self._recorded.pop(key, None)
        for want in wants:
            self._record(want, plan.ready.get(want.key), failures.get(want.key),
                         refs[want.key], podips.get(want.key))

    def _act(self, action: eip_plan.Action, ref: JSON | None, podip: JSON | None) -> None:
        t0 = time.monotonic()
        if isinstance(action, eip_plan.Allocate):
            got = self.cloud.allocate_public_ip(action.bandwidth, action.tags)
            if ref is not None:
                self.kube.event(ref, "PublicIPAllocated", f"EIP {got.allocation_id} "
                                f"({got.ip}, {action.bandwidth} Mbit/s) allocated in "
                                f"{time.monotonic() - t0:.2f}s", warning=False)
        elif isinstance(action, eip_plan.Associate):
            with self._lock:
                if self._held is not None:
                    self._held.add(action.ip)
            self.cloud.associate_public_ip(action.allocation_id, action.eni_id, action.ip)
        elif isinstance(action, eip_plan.Unassociate):
            self.cloud.unassociate_public_ip(action.allocation_id, action.eni_id, action.ip)
        elif isinstance(action, eip_plan.Release):
            self.cloud.release_public_ip(action.allocation_id)
            log.info("released EIP %s (%s) of %s", action.allocation_id, action.ip,
                     action.key)

    def _record(self, want: eip_plan.Want, ready: PublicIp | None,
                failure: tuple[str, str] | None, ref: JSON, podip: JSON | None) -> None:
        """PodIP status and the Event that says the pod is reachable, once per change."""
        if podip is None:
            return
        if ready is not None:
            state = ("True", "Associated", ready.ip)
        elif failure is not None:
            state = ("False", failure[0], "")
        else:
            state = ("False", "Pending", "")
        if self._recorded.get(want.key) == state:
            return
        md = podip["metadata"]
        status: JSON = {"publicIP": state[2] or None,
                        "publicIPAllocationId": ready.allocation_id if ready else None,
                        "conditions": [{
                            "type": CONDITION, "status": state[0], "reason": state[1],
                            "message": (failure[1] if failure else
                                        f"{ready.ip} -> {want.ip}" if ready else
                                        "waiting for the EIP to be associated"),
                            "lastTransitionTime": now_iso()}]}
        try:
            self.kube.custom.patch_namespaced_custom_object_status(
                contract.GROUP, contract.VERSION, md["namespace"], contract.PLURAL_PODIP,
                md["name"], {"status": status})
        except ApiException as e:
            if e.status != 404:
                raise
            return
        self._recorded[want.key] = state
        if ready is not None:
            since = parse_time((podip.get("spec") or {}).get("allocatedAt"))
            took = f", {self.clock() - since:.1f}s after the pod got its IP" if since else ""
            self.kube.event(ref, "PublicIPReady", f"reachable at {ready.ip} "
                            f"({ready.allocation_id} -> {want.ip}){took}", warning=False)

