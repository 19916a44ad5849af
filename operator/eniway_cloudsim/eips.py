"""Elastic IP addresses of the emulated region, and the VPC rules that govern them.

Kept apart from the ENI engine (engine.py), whose lock, clock, store and ENIs it shares:
an EIP points at an ENI and one of its private IPs. Association is asynchronous as in
the VPC API: AssociateEipAddress moves the EIP to Associating, UnassociateEipAddress to
Unassociating, and ``tick`` completes the move once the configured delay has passed.

Modes on a secondary ENI (``InstanceType=NetworkInterface``):
- NAT (default): the ENI keeps its private IPs; each EIP maps to one of them, so an ENI
  takes at most as many EIPs as it has private IPs.
- BINDED (cut-through): only on a secondary ENI bound to no instance, only its primary
  private IP, which the EIP replaces; then it is the ENI's only EIP.
- MULTI_BINDED: refused (no longer accepted for new applications).
With ``InstanceType=EcsInstance`` the EIP maps to the instance's primary ENI's primary IP
(one per instance).

An IP that has an EIP cannot be unassigned from its ENI, nor that ENI deleted, until
the EIP is disassociated (the emulator's guard, so that a caller that releases in the
wrong order is caught).
"""

from __future__ import annotations

import ipaddress
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .engine import ALIYUN, ENI_AVAILABLE, ENI_INUSE, EcsError, Engine, Eni, as_int, tag_list

EIP_AVAILABLE = "Available"
EIP_ASSOCIATING = "Associating"
EIP_INUSE = "InUse"
EIP_UNASSOCIATING = "Unassociating"

MODE_NAT = "NAT"
MODE_CUT_THROUGH = "BINDED"
MODE_MULTI = "MULTI_BINDED"

TYPE_ENI = "NetworkInterface"
TYPE_ECS = "EcsInstance"

BANDWIDTH_MIN = 1
BANDWIDTH_MAX = {"PayByBandwidth": 500, "PayByTraffic": 200}  # PostPaid (SDK docs)
BANDWIDTH_DEFAULT = 5
MAX_IDS_PER_FILTER = 50  # DescribeEipAddresses AllocationId / EipAddress: up to 50 each
MAX_PAGE_SIZE = 100


@dataclass
class EipSettings:
    quota: int = 20  # EIPs per region
    associate_delay: float = 0.5
    unassociate_delay: float = 0.5
    pool: str = "198.51.100.0/24"  # the public addresses handed out (a documentation range)


@dataclass
class Eip:
    allocation_id: str
    ip: str
    bandwidth: int
    internet_charge_type: str
    status: str
    created: float
    name: str = ""
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    instance_type: str = ""  # NetworkInterface | EcsInstance, while associated
    instance_id: str = ""  # the ENI (or instance) it is associated with
    eni_id: str = ""  # the ENI that carries it (the primary ENI for an instance)
    private_ip: str = ""
    mode: str = ""
    transition_at: float | None = None


class EipNetwork(Protocol):
    """What network mode does with an association: translate EIP <-> private IP."""

    def set_eips(self, vpc_id: str, mapping: Mapping[str, str]) -> None: ...


def _eip_error(status: int, code: str, message: str) -> EcsError:
    return EcsError(status, code, message)


def _not_found(allocation_id: str) -> EcsError:
    return _eip_error(404, "InvalidAllocationId.NotFound",
                      f"Specified allocation ID {allocation_id} is not found.")


def _status_error(eip: Eip, what: str) -> EcsError:
    return _eip_error(400, "IncorrectEipStatus",
                      f"Current elastic IP status ({eip.status}) does not support {what}.")


class EipBook:
    """The region's EIPs. Every public method takes the engine's lock."""

    def __init__(self, engine: Engine, settings: EipSettings | None = None,
                 network: Any = None) -> None:
        self.engine = engine
        self.settings = settings or EipSettings()
        self.net = network if hasattr(network, "set_eips") else None
        self.eips: dict[str, Eip] = {}
        if engine.store is not None:
            for row in engine.store.load("eip"):
                eip = Eip(**row)
                self.eips[eip.allocation_id] = eip
        engine.ip_guards.append(self._guard)

    # --- persistence and network --------------------------------------------------------

    def _save(self, eip: Eip) -> None:
        self.engine._save("eip", eip.allocation_id, asdict(eip))

    def _sync_network(self, vpc_id: str) -> None:
        if self.net is None or not vpc_id:
            return
        mapping = {e.ip: e.private_ip for e in self.eips.values()
                   if e.status == EIP_INUSE and e.eni_id in self.engine.enis
                   and self.engine.enis[e.eni_id].vpc_id == vpc_id}
        try:
            self.net.set_eips(vpc_id, mapping)
        except Exception:  # the state is the truth; the next change or restart re-applies
            import logging

            logging.getLogger("eniway_cloudsim.net").exception("network mode: set_eips")

    def rebuild_network(self) -> None:
        with self.engine.lock:
            for vpc_id in self.engine.vpcs:
                self._sync_network(vpc_id)

    # --- guards on ECS calls ------------------------------------------------------------

    def _guard(self, eni: Eni, ips: Sequence[str] | None) -> None:
        """Refuse to unassign an IP (or delete an ENI, ``ips`` None) that has an EIP."""
        for eip in self.eips.values():
            if eip.eni_id != eni.eni_id or eip.status == EIP_AVAILABLE:
                continue
            if ips is None or eip.private_ip in ips:
                raise EcsError(403, "InvalidOperation.EipAssociated",
                               f"{eip.private_ip} on {eni.eni_id} has the EIP "
                               f"{eip.ip} ({eip.allocation_id}); disassociate it first.")

    # --- time -----------------------------------------------------------------------

    def tick(self) -> None:
        with self.engine.lock:
            now = self.engine.clock()
            touched: set[str] = set()
            for eip in self.eips.values():
                if eip.transition_at is None or now < eip.transition_at:
                    continue
                eni = self.engine.enis.get(eip.eni_id)
                if eip.status == EIP_ASSOCIATING:
                    eip.status = EIP_INUSE
                elif eip.status == EIP_UNASSOCIATING:
                    eip.status = EIP_AVAILABLE
                    eip.instance_type = eip.instance_id = eip.eni_id = ""
                    eip.private_ip = eip.mode = ""
                eip.transition_at = None
                self._save(eip)
                if eni is not None:
                    touched.add(eni.vpc_id)
            for vpc_id in touched:
                self._sync_network(vpc_id)

    # --- actions --------------------------------------------------------------------

    def _eip(self, allocation_id: str | None) -> Eip:
        if not allocation_id:
            raise EcsError(400, "MissingParameter.AllocationId",
                           "The input parameter AllocationId that is mandatory for "
                           "processing this request is not supplied.")
        eip = self.eips.get(allocation_id)
        if eip is None:
            raise _not_found(allocation_id)
        return eip

    def _new_ip(self) -> str:
        taken = {e.ip for e in self.eips.values()}
        net = ipaddress.IPv4Network(self.settings.pool)
        for addr in net.hosts():
            if str(addr) not in taken:
                return str(addr)
        raise EcsError(400, "ReserveIpFail", "Reserve eip failed: the address pool "
                       f"{self.settings.pool} is used up.")

    def allocate(self, p: Mapping[str, str]) -> Eip:
        with self.engine.lock:
            charge = p.get("InstanceChargeType") or "PostPaid"
            if charge != "PostPaid":
                raise EcsError(400, "InvalidParameter", f"Specified value of "
                               f"\"InstanceChargeType\" ({charge}) is not valid: only "
                               "PostPaid EIPs are emulated.")
            metering = p.get("InternetChargeType") or "PayByBandwidth"
            if metering not in BANDWIDTH_MAX:
                raise EcsError(400, "InvalidParameter",
                               'Specified value of "InternetChargeType" is not valid.')
            try:
                bandwidth = as_int(p.get("Bandwidth"), "Bandwidth", BANDWIDTH_DEFAULT,
                                   BANDWIDTH_MIN, BANDWIDTH_MAX[metering])
            except EcsError:
                raise EcsError(400, "InvalidParameter",
                               f'Specified value of "Bandwidth" is not valid: '
                               f"{BANDWIDTH_MIN} to {BANDWIDTH_MAX[metering]} Mbit/s with "
                               f"{metering}.") from None
            if len(self.eips) >= self.settings.quota:
                raise EcsError(400, "QuotaExceeded.Eip",
                               f"Elastic IP address quota exceeded ({self.settings.quota} "
                               "per region).")
            alphabet = string.ascii_lowercase + string.digits
            eip = Eip(allocation_id="eip-" + "".join(secrets.choice(alphabet)
                                                     for _ in range(20)),
                      ip=self._new_ip(), bandwidth=bandwidth,
                      internet_charge_type=metering, status=EIP_AVAILABLE,
                      created=self.engine.clock(), name=p.get("Name", ""),
                      description=p.get("Description", ""), tags=tag_list(p))
            self.eips[eip.allocation_id] = eip
            self._save(eip)
            return eip

    def _target(self, p: Mapping[str, str]) -> tuple[str, Eni]:
        """(InstanceType, the ENI that will carry the EIP)."""
        itype = p.get("InstanceType") or TYPE_ECS
        iid = p.get("InstanceId")
        if not iid:
            raise EcsError(400, "MissingParameter.InstanceId",
                           "The input parameter InstanceId is mandatory.")
        e = self.engine
        if itype == TYPE_ENI:
            eni = e.enis.get(iid)
            if eni is None or e.cloud_of(eni.vpc_id) != ALIYUN:  # aws: another dialect's
                raise EcsError(404, "InvalidInstanId.NotFound",
                               f"Specified instance {iid} does not exist.")
            if eni.type == "Primary":
                raise EcsError(400, "InvalidParameter",
                               f"{iid} is a primary ENI: NetworkInterface means a secondary "
                               "ENI; associate with its instance (EcsInstance) instead.")
            return itype, eni
        if itype == TYPE_ECS:
            inst = e.instances.get(iid)
            if inst is None or e.cloud_of(inst.vpc_id) != ALIYUN:
                raise EcsError(404, "InvalidInstanId.NotFound",
                               f"Specified instance {iid} does not exist.")
            return itype, e.enis[inst.primary_eni_id]
        raise EcsError(400, "InvalidInstanceType.ValueNotSupported",
                       f"The specified value of InstanceType ({itype}) is not supported.")

    def associate(self, p: Mapping[str, str]) -> Eip:
        with self.engine.lock:
            self.engine.tick()
            self.tick()
            eip = self._eip(p.get("AllocationId"))
            itype, eni = self._target(p)
            mode = (p.get("Mode") or MODE_NAT) if itype == TYPE_ENI else MODE_NAT
            if mode == MODE_MULTI:
                raise EcsError(400, "InvalidParameter", "Mode MULTI_BINDED (multi-EIP-to-ENI)"
                               " is no longer accepted for new applications.")
            if mode not in (MODE_NAT, MODE_CUT_THROUGH):
                raise EcsError(400, "InvalidParameter",
                               f"Mode {mode} is not one of NAT, BINDED, MULTI_BINDED.")
            if eip.status != EIP_AVAILABLE:
                raise _status_error(eip, "AssociateEipAddress")
            if eni.status not in (ENI_AVAILABLE, ENI_INUSE):
                raise EcsError(400, "IncorrectInstanceStatus", f"Current instance status "
                               f"({eni.status}) does not support this operation.")
            ip = p.get("PrivateIpAddress") or eni.primary_ip
            if ip not in eni.all_ips:
                raise EcsError(400, "InvalidParameter", f"PrivateIpAddress {ip} is not a "
                               f"private IP of {eni.eni_id}.")
            held = [x for x in self.eips.values() if x.eni_id == eni.eni_id]
            if itype == TYPE_ECS and held:
                raise EcsError(400, "InvalidAssociation.Duplicated",
                               "Specified instance already is associated.")
            if mode == MODE_CUT_THROUGH:
                if eni.instance_id:
                    raise EcsError(400, "IncorrectInstanceStatus",
                                   f"Cut-through mode needs a secondary ENI bound to no "
                                   f"instance; {eni.eni_id} is bound to {eni.instance_id}.")
                if ip != eni.primary_ip:
                    raise EcsError(400, "InvalidParameter", "Cut-through mode takes only the "
                                   f"ENI's primary private IP ({eni.primary_ip}), not {ip}.")
                if held:
                    raise EcsError(400, "InvalidAssociation.Duplicated",
                                   "Specified instance already is associated.")
            if any(x.mode == MODE_CUT_THROUGH for x in held):
                raise EcsError(400, "InvalidAssociation.Duplicated", f"{eni.eni_id} has an "
                               "EIP in cut-through mode: it takes no other.")
            if any(x.private_ip == ip for x in held):
                raise EcsError(400, "InvalidAssociation.Duplicated", f"{ip} on "
                               f"{eni.eni_id} already is associated with an EIP.")
            if len(held) >= len(eni.all_ips):  # NAT: one EIP per private IP
                raise EcsError(400, "InvalidAssociation.Duplicated", f"{eni.eni_id} has "
                               f"{len(eni.all_ips)} private IPs, each with an EIP.")
            eip.status = EIP_ASSOCIATING
            eip.instance_type = itype
            eip.instance_id = p.get("InstanceId", "")
            eip.eni_id = eni.eni_id
            eip.private_ip = ip
            eip.mode = mode
            eip.transition_at = self.engine.clock() + self.settings.associate_delay
            self._save(eip)
            if self.settings.associate_delay <= 0:
                self.tick()
            return eip

    def unassociate(self, p: Mapping[str, str]) -> Eip:
        with self.engine.lock:
            self.tick()
            eip = self._eip(p.get("AllocationId"))
            if eip.status != EIP_INUSE:
                raise _status_error(eip, "UnassociateEipAddress")
            for param, held, verb in (("InstanceId", eip.instance_id, "is associated with"),
                                      ("PrivateIpAddress", eip.private_ip, "maps to")):
                if p.get(param) and p[param] != held:
                    raise EcsError(400, "InvalidBindingStatus", f"The eip binding status "
                                   f"invalid: {eip.allocation_id} {verb} {held}, "
                                   f"not {p[param]}.")
            eip.status = EIP_UNASSOCIATING
            eip.transition_at = self.engine.clock() + self.settings.unassociate_delay
            self._save(eip)
            eni = self.engine.enis.get(eip.eni_id)
            if eni is not None:  # traffic stops at once; the state follows
                self._sync_network(eni.vpc_id)
            if self.settings.unassociate_delay <= 0:
                self.tick()
            return eip

    def release(self, p: Mapping[str, str]) -> None:
        with self.engine.lock:
            self.tick()
            eip = self._eip(p.get("AllocationId"))
            if eip.status != EIP_AVAILABLE:
                raise _status_error(eip, "ReleaseEipAddress (only Available EIPs)")
            del self.eips[eip.allocation_id]
            self.engine._drop("eip", eip.allocation_id)

    def filter(self, p: Mapping[str, str]) -> list[Eip]:
        with self.engine.lock:
            self.tick()

            def ids(name: str) -> set[str]:
                got = {x.strip() for x in p.get(name, "").split(",") if x.strip()}
                if len(got) > MAX_IDS_PER_FILTER:
                    raise EcsError(400, "InvalidParameter", f"At most {MAX_IDS_PER_FILTER} "
                                   f"values in {name}.")
                return got

            alloc, addrs, tags = ids("AllocationId"), ids("EipAddress"), tag_list(p)
            out = []
            for eip in sorted(self.eips.values(), key=lambda x: (x.created, x.allocation_id)):
                if alloc and eip.allocation_id not in alloc:
                    continue
                if addrs and eip.ip not in addrs:
                    continue
                if p.get("Status") and eip.status != p["Status"]:
                    continue
                if p.get("AssociatedInstanceType") and \
                        eip.instance_type != p["AssociatedInstanceType"]:
                    continue
                if p.get("AssociatedInstanceId") and \
                        eip.instance_id != p["AssociatedInstanceId"]:
                    continue
                if p.get("EipName") and eip.name != p["EipName"]:
                    continue
                if any(eip.tags.get(k) != v for k, v in tags.items()):
                    continue
                out.append(eip)
            return out

    def snapshot(self) -> list[dict[str, Any]]:
        with self.engine.lock:
            self.tick()
            return [asdict(e) for e in sorted(self.eips.values(), key=lambda x: x.created)]
