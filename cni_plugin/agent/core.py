"""The agent's core: CNI requests (ADD/DEL/CHECK/GC/STATUS), the pool, the store and GC.

Concurrency: one lock guards the in-memory state (pool, records, in-flight set);
netlink work runs outside it. An attachment (container id + ifname) or a pod being
set up or torn down is "in flight" and a second request for it is refused with
code 11 instead of racing. Order of effects, so a crash at any point leaves
something GC can undo: ADD claims the record on disk before creating links and
rules; DEL removes links and rules before the record.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cni_plugin import contract
from cni_plugin.agent.datapath import Datapath, DatapathError, EniLink
from cni_plugin.agent.errors import RecentErrors
from cni_plugin.agent.identity import InstanceView, MetadataError
from cni_plugin.agent.metrics import Metrics
from cni_plugin.agent.pool import Pool
from cni_plugin.agent.store import Allocation, AllocationStore

if TYPE_CHECKING:
    from cni_plugin.agent.exclusive_pods import ExclusivePods

log = logging.getLogger("eniway.agent")

DEFAULT_MTU = 1500


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


@dataclass
class AgentConfig:
    node_name: str
    state_dir: str
    socket_path: str
    host_netns: str | None = None
    mtu: int | None = None
    cooldown: float = 30.0
    gc_interval: float = 60.0
    gc_grace: float = 120.0
    heartbeat_interval: float = 30.0
    resync_interval: float = 30.0
    store_fsync: bool = False


@dataclass
class EniState:
    """An ENI of this node as the agent serves it."""

    id: str
    link: EniLink
    ips: list[str]
    gateway: str


@dataclass
class PodSnapshot:
    """Pods bound to this node, as listed from the API server (for GC)."""

    uids: dict[str, str] = field(default_factory=dict)  # "ns/name" -> uid


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeAgent:
    def __init__(self, cfg: AgentConfig, datapath: Datapath, metrics: Metrics,
                 store: AllocationStore | None = None) -> None:
        self.cfg = cfg
        self.datapath = datapath
        self.metrics = metrics
        self.store = store or AllocationStore(Path(cfg.state_dir), cfg.store_fsync)
        self.pool = Pool(cfg.cooldown)
        self.lock = threading.RLock()
        self.records: dict[str, Allocation] = {}  # ip -> record
        self.by_attachment: dict[tuple[str, str], str] = {}  # (containerId, ifname) -> ip
        self.inflight: set[str] = set()  # attachment keys and pod keys being worked on
        self.enis: dict[str, EniState] = {}
        self.enis_synced = False
        self.pool_synced = False
        self.release_token = ""  # the request spec.release.ips belongs to (echoed back)
        self.errors = RecentErrors()  # the last errors, for eniway-agent debug
        self._stale_since: dict[str, float] = {}  # ip -> when GC first found it stale
        self._reaper: queue.Queue[tuple[Allocation, int | None]] = queue.Queue()
        threading.Thread(target=self._reap_forever, name="reaper", daemon=True).start()
        # Hooks the API side plugs in (PodIP writes, status.agent publishing).
        self.on_bound: Callable[[Allocation], None] = lambda a: None
        self.on_unbound: Callable[[Allocation], None] = lambda a: None
        self.on_change: Callable[[], None] = lambda: None
        self.instance: InstanceView | None = None  # --metadata-url: who this node is
        self.xpods: ExclusivePods | None = None  # exclusive-ENI pods (exclusive_pods.py)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Take the store lock and load every record (restart after a crash included)."""
        self.store.open()
        records, broken = self.store.load()
        for ip in broken:
            log.warning("store record for %s unreadable: reclaiming it", ip)
            self.datapath.delete_rules_for(ip)
            self.store.release(ip)
        with self.lock:
            for rec in records:
                self._index(rec)
                if not rec.exclusive:  # an exclusive ENI's IP is not the pool's
                    self.pool.mark_allocated(rec.ip)
        log.info("loaded %d allocations from %s", len(records), self.store.dir)
        self.datapath.enable_forwarding()
        try:
            primary = self.datapath.route_node_replies()
            log.info("replies to connections via %s (hostPort) leave through it", primary)
        except DatapathError as e:
            # Pods are still served; only hostPort clients on other machines go unanswered.
            log.warning("hostPort replies to other machines will be dropped: %s", e)
        self._publish()

    @property
    def ready(self) -> bool:
        return self.enis_synced and self.pool_synced

    def _index(self, rec: Allocation) -> None:
        self.records[rec.ip] = rec
        self.by_attachment[rec.attachment] = rec.ip

    def _unindex(self, rec: Allocation) -> None:
        self.records.pop(rec.ip, None)
        if self.by_attachment.get(rec.attachment) == rec.ip:
            del self.by_attachment[rec.attachment]

    def _publish(self) -> None:
        with self.lock:
            counts = self.pool.counts()
            self.metrics.set_pool(counts)
            self.metrics.enis.set(len(self.enis))
        self.on_change()

    # -- inputs from the API server ------------------------------------------------------

    def set_enis(self, enis: Iterable[dict[str, Any]]) -> None:
        """ENI objects of this node (any phase): bring the in-use ones up and serve their IPs."""
        serving: dict[str, EniState] = {}
        enis = list(enis)
        if self.xpods is not None:
            self.xpods.set_enis(enis)
        for obj in enis:
            spec, status = obj.get("spec", {}), obj.get("status") or {}
            name = obj["metadata"]["name"]
            # The primary ENI serves pods only where the operator lists pod IPs on it (the
            # cloud's rule: EC2 yes, ECS no); otherwise it is the node's alone.
            primary = bool(spec.get("primary"))
            if (spec.get("nodeName") != self.cfg.node_name
                    or (primary and not status.get("ips"))
                    or spec.get("mode") == contract.MODE_EXCLUSIVE  # a pod's own, not the pool's
                    or status.get("phase") != contract.PHASE_INUSE or not spec.get("macAddress")):
                continue
            gateway = spec.get("gatewayIP") or _first_host(spec.get("vSwitchCidr"))
            if not gateway:
                log.warning("ENI %s has no gatewayIP nor vSwitchCidr: not serving it", name)
                continue
            if not self._attached_here(name, spec["macAddress"]):
                continue
            mtu = int(self.cfg.mtu or spec.get("mtu") or DEFAULT_MTU)
            try:
                link = (self.datapath.ensure_primary(spec["macAddress"], gateway) if primary
                        else self.datapath.ensure_eni(spec["macAddress"], mtu, gateway))
            except DatapathError as e:
                log.error("ENI %s: %s", name, e)
                self.errors.add("eni", f"{name}: {e}")
                continue
            if link is None:
                log.info("ENI %s (%s) has no link on this node yet", name, spec["macAddress"])
                continue
            ips = [e["ip"] for e in status.get("ips") or []
                   if e.get("ip") and e.get("state") != contract.IP_RELEASING]
            serving[name] = EniState(name, link, ips, gateway)
        with self.lock:
            changed = {k: (v.link, v.ips) for k, v in serving.items()} != {
                k: (v.link, v.ips) for k, v in self.enis.items()}
            self.enis = serving
            self.pool.set_enis({k: v.ips for k, v in serving.items()})
            self.enis_synced = True
        if changed:
            log.info("serving ENIs: %s", ", ".join(
                f"{k}({v.link.ifname}, table {v.link.table}, {len(v.ips)} IPs)"
                for k, v in sorted(serving.items())) or "none")
        self._publish()

    def _attached_here(self, name: str, mac: str) -> bool:
        """Whether the instance metadata (when configured) lists ENI ``name`` with ``mac``
        on this instance. A metadata service that cannot be read does not stop the node:
        the ENI is served and the failure is logged; a positive mismatch is refused."""
        if self.instance is None:
            return True
        try:
            ok, why = self.instance.owns(mac, name)
        except MetadataError as e:
            log.warning("ENI %s: cannot check it against the instance metadata: %s", name, e)
            return True
        if not ok:
            log.error("ENI %s: not serving it: %s", name, why)
            self.errors.add("eni", f"{name}: {why}")
        return ok

    def set_release(self, ips: Iterable[str], token: str = "") -> None:
        """The operator's ``spec.release.ips`` and its token: never hand these out while
        listed."""
        with self.lock:
            self.pool.set_release(ips)
            self.release_token = token
            self.pool_synced = True
        self._publish()

    def set_cooldown(self, seconds: float | None) -> None:
        """The node's ``ip_cooldown`` from its ENIPool ``status.config`` (None: the
        ``--cooldown`` flag), so the operator and the agent rest an IP equally long."""
        with self.lock:
            self.pool.cooldown = self.cfg.cooldown if seconds is None else seconds

    def agent_status(self) -> dict[str, Any]:
        """``status.agent`` of this node's ENIPool. The acknowledgements and the token of the
        list they were computed from are read together, under the lock."""
        with self.lock:
            return {
                "acknowledged": self.pool.acknowledged(),
                # None (merge patch: remove) until a token is known: "" is not a string the
                # API server keeps.
                contract.AGENT_RELEASE_TOKEN: self.release_token or None,
                "allocated": sorted(self.records, key=_ipkey),
                "heartbeat": _now_iso(),
                "ready": self.ready,
                "version": version(),
                **({"instance": self.instance.identity.status()}
                   if self.instance is not None and self.instance.identity else {}),
            }

    # -- CNI requests --------------------------------------------------------------------

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Serve one wire request; never raises."""
        cmd = str(req.get("command", ""))
        t0 = time.perf_counter()
        try:
            handler = {
                contract.WIRE_ADD: self.add, contract.WIRE_DEL: self.delete,
                contract.WIRE_CHECK: self.check, contract.WIRE_GC: self.cni_gc,
                contract.WIRE_STATUS: self.status, contract.WIRE_DEBUG: self.debug,
            }.get(cmd)
            if handler is None:
                raise CniError(contract.ERR_INVALID_CONFIG, f"unknown command {cmd!r}")
            if cmd in (contract.WIRE_ADD, contract.WIRE_DEL, contract.WIRE_CHECK):
                bad = contract.request_error(cmd, req)
                if bad:  # the socket is not only the shim's: check again, touch nothing
                    raise CniError(contract.ERR_INVALID_ENV, bad)
            result = handler(req)
            return {"ok": True, "result": result}
        except CniError as e:
            self.metrics.errors.labels(cmd, str(e.code)).inc()
            self.errors.add("cni", f"{cmd} {req.get('podNamespace') or ''!s}/"
                                   f"{req.get('podName') or ''!s}: code {e.code}: {e.msg}")
            log.warning("%s %r/%r: code %d: %s %s", cmd, str(req.get("containerId", ""))[:12],
                        str(req.get("ifname", ""))[:16], e.code, e.msg, e.details)
            return {"ok": False, "code": e.code, "msg": e.msg, "details": e.details}
        except Exception as e:
            self.metrics.errors.labels(cmd, str(contract.ERR_INTERNAL)).inc()
            self.errors.add("cni", f"{cmd}: internal error: {type(e).__name__}: {e}")
            log.exception("%s failed", cmd)
            return {"ok": False, "code": contract.ERR_INTERNAL,
                    "msg": f"eniway-agent internal error: {e}", "details": type(e).__name__}
        finally:
            if cmd in (contract.WIRE_ADD, contract.WIRE_DEL, contract.WIRE_CHECK):
                self.metrics.duration.labels(cmd).observe(time.perf_counter() - t0)

    @staticmethod
    def _attachment(req: dict[str, Any]) -> tuple[str, str]:
        cid, ifname = str(req.get("containerId") or ""), str(req.get("ifname") or "")
        if not cid or not ifname:
            raise CniError(contract.ERR_INVALID_ENV, "containerId and ifname are required")
        return cid, ifname

    def _veth(self, req: dict[str, Any], cid: str, ifname: str) -> tuple[str, str, str]:
        ns, name = str(req.get("podNamespace") or ""), str(req.get("podName") or "")
        if not name:  # no Kubernetes identity (plain runtime): key on the container
            return "", "", contract.veth_name("", f"{cid}/{ifname}")
        suffix = "" if ifname == "eth0" else f"/{ifname}"
        return ns, name, contract.veth_name(ns, name + suffix)

    def add(self, req: dict[str, Any]) -> dict[str, Any]:
        cid, ifname = self._attachment(req)
        netns_path = str(req.get("netns") or "")
        if not netns_path:
            raise CniError(contract.ERR_INVALID_ENV, "CNI_NETNS is required for ADD")
        if not os.path.exists(netns_path):
            raise CniError(contract.ERR_INVALID_ENV,
                           f"network namespace {netns_path} does not exist",
                           "the runtime passed a CNI_NETNS path that is gone")
        ns, name, veth = self._veth(req, cid, ifname)
        att_key, pod_key = f"att:{cid}/{ifname}", f"pod:{ns}/{name}/{ifname}" if name else ""
        if not self.ready:
            raise CniError(contract.ERR_TRY_AGAIN,
                           f"eniway-agent on {self.cfg.node_name} is starting: its ENIs and "
                           "pool are not synced from the API server yet; retry shortly")
        mtu_req = req.get("mtu")
        with self.lock:
            for key in (att_key, pod_key):
                if key and key in self.inflight:
                    raise CniError(
                        contract.ERR_TRY_AGAIN,
                        f"pod {ns}/{name or cid[:12]} ({ifname}) is already being set up "
                        "by another request; retry when it has finished")
            ip = self.by_attachment.get((cid, ifname))
            stale = None
            if ip is None and name:
                stale = next((r for r in self.records.values()
                              if (r.podNamespace, r.podName, r.ifname) == (ns, name, ifname)
                              and self.by_attachment.get(r.attachment) == r.ip), None)
                if stale is not None and os.path.exists(stale.netns):
                    raise CniError(
                        contract.ERR_TRY_AGAIN,
                        f"pod {ns}/{name} still has {stale.ip} on container "
                        f"{stale.containerId[:12]} (netns {stale.netns} exists)",
                        "the runtime must DEL the previous sandbox first")
            self.inflight.update(k for k in (att_key, pod_key) if k)
            if stale is not None:
                self.inflight.add(f"att:{stale.containerId}/{stale.ifname}")
        try:
            if stale is not None:
                log.info("pod %s/%s: releasing %s of vanished sandbox %s", ns, name, stale.ip,
                         stale.containerId[:12])
                self._release(stale)
            if ip is not None:
                rec = self.records[ip]
                if rec.exclusive and self.xpods is not None:
                    return self.xpods.readd(rec, netns_path)
                return self._readd(rec, netns_path)
            if self.xpods is not None and name and self.xpods.wanted(
                    ns, name, str(req.get("podUID") or "")):
                return self.xpods.add(req, cid, ifname, netns_path, ns, name)
            return self._add_new(req, cid, ifname, netns_path, ns, name, veth, mtu_req)
        finally:
            with self.lock:
                self.inflight.difference_update({att_key, pod_key})
                if stale is not None:
                    self.inflight.discard(f"att:{stale.containerId}/{stale.ifname}")

    def _add_new(self, req: dict[str, Any], cid: str, ifname: str, netns_path: str, ns: str,
                 name: str, veth: str, mtu_req: Any) -> dict[str, Any]:
        with self.lock:
            got = self.pool.take()
            if got is None:
                counts = self.pool.counts()
                raise CniError(
                    contract.ERR_NO_FREE_IP,
                    f"no free IP on node {self.cfg.node_name}: {counts['allocated']} allocated, "
                    f"{counts['total']} total on {len(self.enis)} ENIs, "
                    f"{counts['releasing']} being released",
                    f"the operator grows the pool (kubectl get enipool {self.cfg.node_name}; "
                    "kubectl get enis); the runtime retries the pod")
            ip, eni_id = got
            eni = self.enis[eni_id]
        mtu = int(mtu_req or self.cfg.mtu or eni.link.mtu or DEFAULT_MTU)
        rec = Allocation(
            ip=ip, eniId=eni_id, containerId=cid, ifname=ifname, netns=netns_path,
            podNamespace=ns, podName=name, podUID=str(req.get("podUID") or ""), veth=veth,
            hostNetns=self.cfg.host_netns or "", table=eni.link.table, mtu=mtu,
            allocatedAt=_now_iso(), allocatedAtEpoch=time.time())
        try:
            claimed = self.store.claim(rec)
        except OSError as e:
            with self.lock:
                self.pool.give_back(ip, cool=False)
            raise CniError(contract.ERR_IO, f"cannot write allocation record: {e}",
                           str(self.store.dir)) from e
        if not claimed:  # on disk but not in memory: never hand it out, let GC look at it
            log.error("IP %s is already claimed on disk; skipping it", ip)
            raise CniError(contract.ERR_TRY_AGAIN, f"IP {ip} was claimed concurrently; retry")
        with self.lock:
            self._index(rec)
        try:
            link = self.datapath.setup_pod(netns_path, ifname, veth, ip, rec.table, mtu)
        except DatapathError as e:
            self._rollback(rec)
            raise CniError(contract.ERR_DATAPATH, f"setting up {ifname} for {ip} failed: {e}",
                           "nothing was left behind; the runtime retries the pod") from e
        except BaseException:
            self._rollback(rec)
            raise
        self.on_bound(rec)
        self._publish()
        return self._result(rec, link.host_mac, link.pod_mac, eni)

    def _rollback(self, rec: Allocation) -> None:
        try:
            self.datapath.teardown_pod(rec.veth, rec.ip)
        except DatapathError as e:
            log.error("rollback of %s: %s (GC will retry)", rec.ip, e)
            return  # keep the record: GC finds and removes what is left
        self.store.release(rec.ip)
        with self.lock:
            self._unindex(rec)
            self.pool.give_back(rec.ip, cool=False)

    def _readd(self, rec: Allocation, netns_path: str) -> dict[str, Any]:
        """ADD again for the same attachment: same address; repair the wiring if needed."""
        with self.lock:
            eni = self.enis.get(rec.eniId)
        if netns_path != rec.netns:
            raise CniError(contract.ERR_INVALID_ENV,
                           f"container {rec.containerId[:12]} already has {rec.ip} in netns "
                           f"{rec.netns}, not {netns_path}")
        problems = self.datapath.check_pod(rec.netns, rec.ifname, rec.veth, rec.ip, rec.table)
        if problems:
            log.info("re-ADD %s: rewiring (%s)", rec.ip, "; ".join(problems))
            try:
                self.datapath.teardown_pod(rec.veth, rec.ip)
                self.datapath.setup_pod(rec.netns, rec.ifname, rec.veth, rec.ip, rec.table,
                                        rec.mtu)
            except DatapathError as e:
                raise CniError(contract.ERR_DATAPATH, f"rewiring {rec.ip} failed: {e}") from e
        host = self.datapath.host().link("get", ifname=rec.veth)[0]
        mac = str(host.get("address"))
        return self._result(rec, mac, "", eni)

    def _result(self, rec: Allocation, host_mac: str, pod_mac: str,
                eni: EniState | None) -> dict[str, Any]:
        return {"ip": rec.ip, "gateway": contract.POD_GATEWAY, "mtu": rec.mtu,
                "hostVeth": rec.veth, "hostMac": host_mac, "podMac": pod_mac,
                "ifname": rec.ifname, "netns": rec.netns, "eniId": rec.eniId,
                "vSwitchGateway": eni.gateway if eni else ""}

    def delete(self, req: dict[str, Any]) -> dict[str, Any]:
        """DEL: cut the pod off synchronously (route, rules), answer, and let the reaper
        delete the veth and return the IP (a veth delete waits for an RCU grace period,
        tens of ms, and the runtime is about to delete the netns anyway). Until the
        reaper is done the IP stays allocated, so it cannot be handed out early."""
        cid, ifname = self._attachment(req)
        att_key = f"att:{cid}/{ifname}"
        with self.lock:
            if att_key in self.inflight:
                raise CniError(contract.ERR_TRY_AGAIN,
                               f"container {cid[:12]} ({ifname}) is being set up right now; "
                               "retry")
            ip = self.by_attachment.pop((cid, ifname), None)
            if ip is None:
                return {}  # never set up, or already released: DEL is idempotent
            rec = self.records[ip]
            exclusive = rec.exclusive and self.xpods is not None
            self.inflight.add(att_key if exclusive else f"rel:{ip}")
        if exclusive and self.xpods is not None:
            try:
                return self.xpods.delete(rec)
            finally:
                with self.lock:
                    self.inflight.discard(att_key)
        try:
            index = self.datapath.detach_pod(rec.veth, rec.ip, rec.table)
        except DatapathError as e:
            with self.lock:
                self.by_attachment[rec.attachment] = ip
                self.inflight.discard(f"rel:{ip}")
            raise CniError(contract.ERR_DATAPATH, f"tearing down {rec.ip} failed: {e}") from e
        self._reaper.put((rec, index))
        return {"ip": rec.ip}

    def _reap_forever(self) -> None:
        while True:
            rec, index = self._reaper.get()
            try:
                if index is not None:
                    self.datapath.delete_link_index(index)
                self.datapath.delete_rules_for(rec.ip)  # a rule re-added meanwhile by repair
                self.store.release(rec.ip)
                with self.lock:
                    self.records.pop(rec.ip, None)
                    self.pool.give_back(rec.ip)
                self.on_unbound(rec)
                self._publish()
            except Exception:
                log.exception("releasing %s failed: GC will retry", rec.ip)
                with self.lock:  # back to a normal record: GC reclaims it (netns gone)
                    self.by_attachment.setdefault(rec.attachment, rec.ip)
            finally:
                with self.lock:
                    self.inflight.discard(f"rel:{rec.ip}")
                self._reaper.task_done()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait for pending releases (clean shutdown)."""
        deadline = time.monotonic() + timeout
        while self._reaper.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def _release(self, rec: Allocation, cool: bool = True) -> None:
        if rec.exclusive and self.xpods is not None:
            self.xpods.release(rec)
            return
        try:
            self.datapath.teardown_pod(rec.veth, rec.ip)
        except DatapathError as e:
            raise CniError(contract.ERR_DATAPATH, f"tearing down {rec.ip} failed: {e}") from e
        self.store.release(rec.ip)
        with self.lock:
            self._unindex(rec)
            self.pool.give_back(rec.ip, cool=cool)
        self.on_unbound(rec)
        self._publish()

    def check(self, req: dict[str, Any]) -> dict[str, Any]:
        cid, ifname = self._attachment(req)
        with self.lock:
            ip = self.by_attachment.get((cid, ifname))
            rec = self.records.get(ip) if ip else None
        if rec is None:
            raise CniError(contract.ERR_UNKNOWN_CONTAINER,
                           f"no eniway address for container {cid[:12]} ({ifname})")
        want = req.get("prevIP")
        if want and want != rec.ip:
            raise CniError(contract.ERR_DATAPATH,
                           f"prevResult says {want}, eniway allocated {rec.ip}")
        if rec.exclusive and self.xpods is not None:
            problems = self.xpods.check(rec)
        else:
            problems = self.datapath.check_pod(rec.netns, rec.ifname, rec.veth, rec.ip,
                                               rec.table)
        if problems:
            raise CniError(contract.ERR_DATAPATH, f"{rec.ip}: " + "; ".join(problems))
        return {"ip": rec.ip}

    def cni_gc(self, req: dict[str, Any]) -> dict[str, Any]:
        """CNI GC: release every attachment the runtime no longer knows."""
        valid = {(str(a.get("containerID")), str(a.get("ifname")))
                 for a in req.get("validAttachments") or []}
        with self.lock:
            victims = [r for r in self.records.values() if r.attachment not in valid]
        released = []
        for rec in victims:
            if self._reclaim(rec, "cni-gc"):
                released.append(rec.ip)
        return {"released": released}

    def status(self, req: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            counts = self.pool.counts()
            body = {"node": self.cfg.node_name, "ready": self.ready, "counts": counts,
                    "enis": sorted(self.enis), "allocations": len(self.records),
                    "cooldown": self.pool.cooldown}
        if not self.ready:
            raise CniError(contract.ERR_PLUGIN_NOT_AVAILABLE,
                           f"eniway-agent on {self.cfg.node_name} is not ready: ENIs or pool "
                           "not synced from the API server yet", str(body))
        return body

    def debug(self, req: dict[str, Any]) -> dict[str, Any]:
        """``eniway-agent debug``: the node's state (answered before the agent is ready too)."""
        from cni_plugin.agent.debug import snapshot  # only when asked: not on the CNI path
        return snapshot(self)

    # -- GC and repair -------------------------------------------------------------------

    def _reclaim(self, rec: Allocation, reason: str) -> bool:
        key = f"att:{rec.containerId}/{rec.ifname}"
        with self.lock:
            if (key in self.inflight or f"rel:{rec.ip}" in self.inflight
                    or self.records.get(rec.ip) is not rec
                    or self.by_attachment.get(rec.attachment) != rec.ip):
                return False
            self.inflight.add(key)
        try:
            self._release(rec)
        except CniError as e:
            log.error("GC of %s: %s", rec.ip, e.msg)
            return False
        finally:
            with self.lock:
                self.inflight.discard(key)
        log.info("GC released %s (pod %s/%s, container %s): %s", rec.ip, rec.podNamespace,
                 rec.podName, rec.containerId[:12], reason)
        self.metrics.gc_reclaimed.labels(reason).inc()
        return True

    def gc_once(self, pods: PodSnapshot | None) -> list[str]:
        """One GC pass. ``pods`` is None when the API server could not be asked: then only
        allocations whose netns is gone are reclaimed. Returns the IPs released."""
        released: list[str] = []
        links = self.datapath.pod_veths()
        rule_ips = self.datapath.pod_rule_ips()
        now = time.time()
        with self.lock:
            snapshot = list(self.records.values())
            busy = set(self.inflight)
        for ip in set(self._stale_since) - {r.ip for r in snapshot}:
            del self._stale_since[ip]
        for rec in snapshot:
            if f"att:{rec.containerId}/{rec.ifname}" in busy or f"rel:{rec.ip}" in busy:
                continue
            reason = self._stale_reason(rec, pods)
            if reason:
                # Stale for a whole grace period (and not younger than it): the runtime's
                # own DEL normally comes first.
                since = self._stale_since.setdefault(rec.ip, now)
                if (now - since >= self.cfg.gc_grace
                        and now - rec.allocatedAtEpoch >= self.cfg.gc_grace
                        and self._reclaim(rec, reason)):
                    released.append(rec.ip)
                continue
            self._stale_since.pop(rec.ip, None)
            if rec.exclusive:
                continue  # no host side to repair: the whole link is the pod's
            eni = self.enis.get(rec.eniId)
            table = eni.link.table if eni else rec.table  # the ENI may have been re-attached
            try:
                if self.datapath.repair_host(rec.veth, rec.ip, table):
                    self.metrics.repairs.inc()
            except Exception as e:
                log.warning("repair of %s: %s", rec.ip, e)
        # Links and rules are created only after their record is indexed (and the IP
        # marked allocated), and removed before it is dropped: any listed above that has
        # no record now is an orphan. Deletion holds the lock and goes by ifindex, so a
        # new pod reusing the name or the IP meanwhile is never touched.
        with self.lock:
            known_veths = {r.veth for r in self.records.values()}
            for name, index in links.items():
                if name not in known_veths:
                    log.info("GC: removing orphan link %s", name)
                    self.datapath.delete_link_index(index)
                    self.metrics.gc_orphans.labels("link").inc()
            for ip in rule_ips:
                if ip not in self.records and ip not in self.pool.allocated:
                    log.info("GC: removing orphan rules of %s", ip)
                    self.datapath.delete_rules_for(ip)
                    self.metrics.gc_orphans.labels("rule").inc()
        return released

    @staticmethod
    def _stale_reason(rec: Allocation, pods: PodSnapshot | None) -> str:
        if not os.path.exists(rec.netns):
            return "netns-gone"
        if pods is None or not rec.podName:
            return ""
        uid = pods.uids.get(f"{rec.podNamespace}/{rec.podName}")
        if uid is None:
            return "pod-gone"
        if rec.podUID and uid and uid != rec.podUID:
            return "pod-replaced"
        return ""

    def snapshot(self) -> list[Allocation]:
        with self.lock:
            return list(self.records.values())


def _ipkey(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split("."))


def _first_host(cidr: str | None) -> str | None:
    if not cidr:
        return None
    try:
        return str(next(ipaddress.ip_network(cidr, strict=False).hosts()))
    except (ValueError, StopIteration):
        return None


def version() -> str:
    """This agent's package version (status.agent.version, eniway-agent debug)."""
    try:
        from importlib.metadata import version
        return version("eniway")
    except Exception:
        return "unknown"
