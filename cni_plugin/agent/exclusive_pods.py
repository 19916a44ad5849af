"""Exclusive-mode pods on this node: ADD, DEL and CHECK of a pod that owns a whole ENI.

Which pod is exclusive, and with which ENI, the agent learns from the ENI resources the
operator records (``spec.mode: Exclusive``, ``spec.podNamespace``/``podName``, its claim,
status ``InUse`` on this node, with MAC, primary IP, vSwitch CIDR and gateway): it
already watches every ENI resource labelled with its node. A pod whose ENI is not there
yet is still known to want one from the pod itself (the annotation or the resource
request, read from the API server): ADD then waits up to ``wait`` seconds for the ENI to
be InUse here with its link on the node, and answers "try again later" (CNI code 11) if
it is not, so kubelet retries.

The allocation goes to the crash-safe store like a shared IP, keyed by the ENI's primary
IP and carrying the ENI's MAC: DEL after an agent restart still knows which link to move
back. DEL moves the link back to the node (down, bare) so the operator can detach it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from cni_plugin import contract
from cni_plugin.agent.core import DEFAULT_MTU, CniError, NodeAgent, _now_iso
from cni_plugin.agent.datapath import DatapathError
from cni_plugin.agent.exclusive import ExclusiveDatapath, ExclusiveLink
from cni_plugin.agent.store import Allocation

log = logging.getLogger("eniway.agent.exclusive")

DEFAULT_WAIT = 5.0  # seconds ADD waits for a pod's ENI before answering code 11


class ExclusivePods:
    """The node's exclusive ENIs by pod, and the CNI operations on them."""

    def __init__(self, agent: NodeAgent, wait: float = DEFAULT_WAIT,
                 pod_wants: Callable[[str, str, str], bool] = lambda ns, name, uid: False
                 ) -> None:
        self.agent = agent
        self.wait = wait
        self.pod_wants = pod_wants  # (namespace, name, uid): the pod opted in
        self.datapath = ExclusiveDatapath(agent.datapath)
        self._cond = threading.Condition()
        self._enis: dict[str, dict[str, Any]] = {}  # "ns/name" -> its ENI resource
        agent.xpods = self

    # -- input ---------------------------------------------------------------------------
    def set_enis(self, objs: Iterable[dict[str, Any]]) -> None:
        """The node's ENI resources (every phase); keeps the exclusive ones InUse here."""
        mine: dict[str, dict[str, Any]] = {}
        for o in objs:
            spec, status = o.get("spec") or {}, o.get("status") or {}
            if (spec.get("mode") == contract.MODE_EXCLUSIVE
                    and spec.get("nodeName") == self.agent.cfg.node_name
                    and status.get("phase") == contract.PHASE_INUSE and spec.get("podName")
                    and spec.get("macAddress") and spec.get("primaryIP")):
                mine[f"{spec.get('podNamespace') or ''}/{spec['podName']}"] = o
        with self._cond:
            self._enis = mine
            self._cond.notify_all()

    def _eni_for(self, ns: str, name: str, uid: str) -> dict[str, Any] | None:
        eni = self._enis.get(f"{ns}/{name}")
        if eni is None:
            return None
        claim = str((eni.get("spec") or {}).get("claim") or "")
        if uid and claim and claim not in (uid, f"{ns}/{name}"):
            return None  # an earlier pod's of the same name (Elastic): not this one's
        return eni

    def wanted(self, ns: str, name: str, uid: str) -> bool:
        """Whether ADD of this pod is exclusive: its ENI is recorded, or the pod asks."""
        with self._cond:
            if self._eni_for(ns, name, uid) is not None:
                return True
        return self.pod_wants(ns, name, uid)

    # -- CNI -----------------------------------------------------------------------------
    def add(self, req: dict[str, Any], cid: str, ifname: str, netns_path: str, ns: str,
            name: str) -> dict[str, Any]:
        uid = str(req.get("podUID") or "")
        eni = self._wait_for(ns, name, uid, netns_path)
        spec = eni["spec"]
        mac, ip = str(spec["macAddress"]).lower(), str(spec["primaryIP"])
        prefixlen, gateway = _prefix(spec)
        mtu = int(req.get("mtu") or self.agent.cfg.mtu or spec.get("mtu") or DEFAULT_MTU)
        rec = Allocation(
            ip=ip, eniId=str(eni["metadata"]["name"]), containerId=cid, ifname=ifname,
            netns=netns_path, podNamespace=ns, podName=name, podUID=uid, veth="",
            hostNetns=self.agent.cfg.host_netns or "", table=0, mtu=mtu,
            allocatedAt=_now_iso(), allocatedAtEpoch=time.time(), mac=mac)
        try:
            claimed = self.agent.store.claim(rec)
        except OSError as e:
            raise CniError(contract.ERR_IO, f"cannot write allocation record: {e}",
                           str(self.agent.store.dir)) from e
        if not claimed:
            raise CniError(contract.ERR_TRY_AGAIN,
                           f"{ip} of ENI {rec.eniId} is still recorded for another sandbox; "
                           "retry once it is released")
        with self.agent.lock:
            self.agent._index(rec)
        try:
            self.datapath.move_in(mac, netns_path, ifname, ip, prefixlen, gateway, mtu)
        except DatapathError as e:
            self._undo(rec)
            raise CniError(contract.ERR_DATAPATH,
                           f"moving ENI {rec.eniId} into the pod failed: {e}",
                           "its link went back to the node; the runtime retries the pod") from e
        except BaseException:
            self._undo(rec)
            raise
        log.info("pod %s/%s: ENI %s (%s, %s) moved in as %s", ns, name, rec.eniId, mac, ip,
                 ifname)
        self.agent.on_bound(rec)
        self.agent._publish()
        return self.result(rec, gateway, prefixlen)

    def _wait_for(self, ns: str, name: str, uid: str, netns_path: str) -> dict[str, Any]:
        """The pod's ENI once InUse here with its link on the node (or already in the
        pod), within ``wait`` seconds; else code 11."""
        deadline = time.monotonic() + self.wait
        while True:
            with self._cond:
                eni = self._eni_for(ns, name, uid)
                if eni is None and time.monotonic() < deadline:
                    self._cond.wait(min(0.2, max(deadline - time.monotonic(), 0.0)))
                    continue
            if eni is not None:
                mac = str(eni["spec"]["macAddress"])
                if self.datapath.on_node(mac) or self.datapath.in_netns(mac, netns_path):
                    return eni
                if time.monotonic() < deadline:
                    time.sleep(0.05)  # attached in the cloud, its link not here yet
                    continue
            why = (f"ENI {eni['metadata']['name']} is attached but its link "
                   f"({eni['spec']['macAddress']}) is not on the node yet" if eni is not None
                   else "its ENI is not attached to this node yet")
            raise CniError(contract.ERR_TRY_AGAIN,
                           f"pod {ns}/{name} runs on its own ENI and {why} "
                           f"(waited {self.wait:g} s); try again later",
                           "kubectl get enis shows its ENI's phase; the operator attaches it")

    def readd(self, rec: Allocation, netns_path: str) -> dict[str, Any]:
        if netns_path != rec.netns:
            raise CniError(contract.ERR_INVALID_ENV,
                           f"container {rec.containerId[:12]} already has {rec.ip} in netns "
                           f"{rec.netns}, not {netns_path}")
        link = self._link(rec)
        if self.datapath.check(link, rec.netns):
            try:
                self.datapath.move_in(rec.mac, rec.netns, rec.ifname, rec.ip, link.prefixlen,
                                      link.gateway, rec.mtu)
            except DatapathError as e:
                raise CniError(contract.ERR_DATAPATH, f"rewiring {rec.ip} failed: {e}") from e
        return self.result(rec, link.gateway, link.prefixlen)

    def delete(self, rec: Allocation) -> dict[str, Any]:
        """DEL: the link back to the node, then the record (the caller took the
        attachment out of the index)."""
        try:
            self.datapath.move_out(rec.mac, rec.netns)
        except DatapathError as e:
            with self.agent.lock:
                self.agent.by_attachment[rec.attachment] = rec.ip
            raise CniError(contract.ERR_DATAPATH,
                           f"moving ENI {rec.eniId} back to the node failed: {e}") from e
        self._forget(rec)
        return {"ip": rec.ip}

    def release(self, rec: Allocation) -> None:
        """A stale record (GC, a vanished sandbox): the link back, the record gone."""
        try:
            self.datapath.move_out(rec.mac, rec.netns)
        except DatapathError as e:
            raise CniError(contract.ERR_DATAPATH, f"tearing down {rec.ip} failed: {e}") from e
        with self.agent.lock:
            self.agent._unindex(rec)
        self._forget(rec)

    def check(self, rec: Allocation) -> list[str]:
        return self.datapath.check(self._link(rec), rec.netns)

    def result(self, rec: Allocation, gateway: str, prefixlen: int) -> dict[str, Any]:
        return {"ip": rec.ip, "gateway": gateway, "prefixLength": prefixlen, "mtu": rec.mtu,
                "hostVeth": "", "hostMac": "", "podMac": rec.mac, "ifname": rec.ifname,
                "netns": rec.netns, "eniId": rec.eniId, "vSwitchGateway": gateway,
                "mode": contract.MODE_EXCLUSIVE}

    # -- helpers -------------------------------------------------------------------------
    def _link(self, rec: Allocation) -> ExclusiveLink:
        with self._cond:
            eni = next((e for e in self._enis.values()
                        if e["metadata"]["name"] == rec.eniId), None)
        prefixlen, gateway = _prefix(eni["spec"]) if eni is not None else (32, "")
        if eni is None:  # not recorded now (agent restarted, resource changing): the pod's own
            prefixlen, gateway = self.datapath.addressing(rec.mac, rec.netns, rec.ip)
        return ExclusiveLink(rec.ifname, rec.mac, rec.ip, prefixlen, gateway, rec.mtu)

    def _undo(self, rec: Allocation) -> None:
        try:
            self.datapath.move_out(rec.mac, rec.netns)
        except DatapathError as e:
            log.error("undoing ADD of %s: %s (GC retries)", rec.ip, e)
            return
        with self.agent.lock:
            self.agent._unindex(rec)
        self.agent.store.release(rec.ip)

    def _forget(self, rec: Allocation) -> None:
        self.agent.store.release(rec.ip)
        with self.agent.lock:
            if self.agent.records.get(rec.ip) is rec:
                self.agent.records.pop(rec.ip, None)
        log.info("pod %s/%s: ENI %s (%s) back on the node", rec.podNamespace, rec.podName,
                 rec.eniId, rec.mac)
        self.agent.on_unbound(rec)
        self.agent._publish()


def _prefix(spec: dict[str, Any]) -> tuple[int, str]:
    """The vSwitch prefix length and gateway of an ENI resource's spec."""
    cidr = spec.get("vSwitchCidr") or ""
    try:
        net = ipaddress.ip_network(cidr, strict=False) if cidr else None
    except ValueError:
        net = None
    gateway = str(spec.get("gatewayIP") or "")
    if not gateway and net is not None:
        gateway = str(net.broadcast_address - 2)  # the vSwitch gateway, as in ECS
    if not gateway:
        raise CniError(contract.ERR_INVALID_CONFIG,
                       f"ENI {spec.get('macAddress')} has no gatewayIP nor vSwitchCidr")
    return (net.prefixlen if net is not None else 32), gateway
