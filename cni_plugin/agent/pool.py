"""The node's IP pool: which secondary IPs may be handed to a pod right now.

Pure state, no I/O; the agent serialises calls with one lock. An IP can be handed
out when it is listed on an ENI of this node that is in use, no allocation holds
it, and the operator has not asked for it back (``spec.release.ips``). Free IPs are
kept in a ``SortedSet`` so ``take`` is O(log n) and deterministic (lowest first).
A just-released IP cools down before reuse (stale ARP/conntrack entries elsewhere
in the VPC may still point at the old pod); when nothing else is free, the IP that
has cooled longest is used rather than failing the pod.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping

from sortedcontainers import SortedSet


def _key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


class Pool:
    def __init__(self, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self.clock = clock
        self.owner: dict[str, str] = {}  # ip -> ENI id, for IPs of usable ENIs
        self.allocated: set[str] = set()
        self.release: set[str] = set()  # operator's spec.release.ips
        self.cooling: dict[str, float] = {}  # ip -> time it was released
        self._free: SortedSet = SortedSet(key=_key)

    # -- inputs --------------------------------------------------------------------------

    def set_enis(self, enis: Mapping[str, Iterable[str]]) -> None:
        """Replace the usable ENIs and their IPs."""
        self.owner = {ip: eni for eni, ips in enis.items() for ip in ips}
        self._rebuild()

    def set_release(self, ips: Iterable[str]) -> None:
        self.release = set(ips)
        self._rebuild()

    def mark_allocated(self, ip: str) -> None:
        self.allocated.add(ip)
        self._free.discard(ip)
        self.cooling.pop(ip, None)

    def _rebuild(self) -> None:
        self._free = SortedSet(
            (ip for ip in self.owner
             if ip not in self.allocated and ip not in self.release and ip not in self.cooling),
            key=_key)
        self.cooling = {ip: t for ip, t in self.cooling.items() if ip in self.owner}

    # -- allocation ----------------------------------------------------------------------

    def take(self) -> tuple[str, str] | None:
        """Allocate the lowest free IP: ``(ip, eni id)``, or None when the pool is empty."""
        self._expire()
        if self._free:
            ip = self._free.pop(0)
        else:
            usable = [ip for ip in self.cooling if ip not in self.release]
            if not usable:
                return None
            ip = min(usable, key=lambda i: self.cooling[i])
            del self.cooling[ip]
        self.allocated.add(ip)
        return ip, self.owner[ip]

    def give_back(self, ip: str, cool: bool = True) -> None:
        """Return an IP (pod gone). It cools down before it is handed out again."""
        self.allocated.discard(ip)
        if ip not in self.owner or ip in self.release:
            return
        if cool and self.cooldown > 0:
            self.cooling[ip] = self.clock()
        else:
            self._free.add(ip)

    def _expire(self) -> None:
        now = self.clock()
        for ip, since in list(self.cooling.items()):
            if now - since >= self.cooldown:
                del self.cooling[ip]
                if ip not in self.allocated and ip not in self.release:
                    self._free.add(ip)

    # -- views ---------------------------------------------------------------------------

    def acknowledged(self) -> list[str]:
        """Release-requested IPs that no pod holds: safe for the operator to unassign."""
        return sorted((ip for ip in self.release if ip not in self.allocated), key=_key)

    def counts(self) -> dict[str, int]:
        self._expire()
        return {
            "total": len(self.owner),
            "free": len(self._free),
            "cooling": len(self.cooling),
            "allocated": len(self.allocated),
            "releasing": len(self.acknowledged()),
        }
