"""Exclusive-ENI datapath: a whole ENI becomes the pod's interface.

ADD finds the ENI's link in the node namespace by its MAC (the cloud's, stable across
attachments), moves it into the pod's netns under the pod's interface name, and gives it
the ENI's primary IP with the vSwitch prefix, the MTU and a default route via the vSwitch
gateway: the pod talks to the VPC directly, no veth, no host route, no policy rule, and
the VPC's source check sees the ENI's own address on the ENI's own link.

DEL moves the link back into the node namespace, down and without addresses, under a
name derived from its MAC, so the operator can detach it. A link already back (or gone
with its netns) is fine: DEL never fails because something is already gone. When a netns
is deleted with the link still inside, the kernel itself returns a physical NIC to the
initial namespace; the operator's detach then works all the same.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni_plugin import contract
from cni_plugin.agent import netns
from cni_plugin.agent.datapath import Datapath, DatapathError, _ignore

# Links parked in the node namespace after DEL: "xe" + the MAC's 12 hex digits.
PARK_PREFIX = contract.EXCLUSIVE_PARK_PREFIX


def park_name(mac: str) -> str:
    """The node-side name of an exclusive ENI's link between pods (15 bytes at most)."""
    return PARK_PREFIX + mac.lower().replace(":", "")


@dataclass(frozen=True)
class ExclusiveLink:
    """What ADD set up: the pod's interface and its address."""

    ifname: str
    mac: str
    ip: str
    prefixlen: int
    gateway: str
    mtu: int


class ExclusiveDatapath:
    """Moves ENI links between the node namespace and pods' namespaces."""

    def __init__(self, datapath: Datapath) -> None:
        self.datapath = datapath

    def on_node(self, mac: str) -> bool:
        """Whether the ENI's link is in the node namespace (attached, not in a pod)."""
        return self.datapath.find_link_by_mac(mac) is not None

    def move_in(self, mac: str, netns_path: str, ifname: str, ip: str, prefixlen: int,
                gateway: str, mtu: int) -> ExclusiveLink:
        """Make the ENI with ``mac`` the pod's ``ifname``. Idempotent: a link already in
        the pod is (re)configured. Raises DatapathError (the caller then calls
        ``move_out``, which undoes any part of it)."""
        want = ExclusiveLink(ifname, mac.lower(), ip, prefixlen, gateway, mtu)
        if self._index_in(netns_path, mac) is None:
            found = self.datapath.find_link_by_mac(mac)
            if found is None:
                raise DatapathError(f"find ENI {mac}", OSError(
                    errno.ENODEV, "no link with this MAC on the node (still attaching?)"))
            step = f"move {found[0]} ({mac}) into {netns_path} as {ifname}"
            try:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    host = self.datapath.host()
                    host.link("set", index=found[1], state="down")
                    host.link("set", index=found[1], net_ns_fd=fd, ifname=ifname)
                finally:
                    os.close(fd)
            except (NetlinkError, OSError) as e:
                raise DatapathError(step, e) from e
        step = f"configure {ifname} ({ip}/{prefixlen}) in {netns_path}"
        try:
            with _in(netns_path) as ipr:
                index = _by_mac(ipr, mac)
                if index is None:
                    raise OSError(errno.ENODEV, f"{mac} vanished from {netns_path}")
                ipr.link("set", index=index, mtu=mtu, state="up")
                for a in ipr.get_addr(index=index, family=socket.AF_INET):
                    if (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) != (ip, prefixlen):
                        ipr.addr("del", index=index, address=a.get_attr("IFA_ADDRESS"),
                                 prefixlen=a["prefixlen"])
                with _ignore(errno.EEXIST):
                    ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
                ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)
        except (NetlinkError, OSError) as e:
            raise DatapathError(step, e) from e
        return want

    def move_out(self, mac: str, netns_path: str) -> bool:
        """Move the ENI's link from the pod back to the node, down and bare. True when
        it was in the pod; False when it was not there (already back, or its netns is
        gone). Never fails because something is already gone."""
        if not netns_path or not os.path.exists(netns_path):
            self._park(mac)
            return False
        step = f"move {mac} out of {netns_path}"
        try:
            host_fd = os.open(self.datapath.host_path or "/proc/thread-self/ns/net",
                              os.O_RDONLY | os.O_CLOEXEC)
            try:
                with _in(netns_path) as ipr:
                    index = _by_mac(ipr, mac)
                    if index is None:
                        moved = False
                    else:
                        ipr.link("set", index=index, state="down")
                        with _ignore(errno.EADDRNOTAVAIL):
                            ipr.flush_addr(index=index)
                        ipr.link("set", index=index, net_ns_fd=host_fd, ifname=park_name(mac))
                        moved = True
            finally:
                os.close(host_fd)
        except FileNotFoundError:
            moved = False  # the netns went away meanwhile
        except (NetlinkError, OSError) as e:
            raise DatapathError(step, e) from e
        self._park(mac)
        return moved

    def _park(self, mac: str) -> None:
        """A link of this MAC on the node: down, no addresses, parked name."""
        found = self.datapath.find_link_by_mac(mac)
        if found is None:
            return
        host = self.datapath.host()
        try:
            host.link("set", index=found[1], state="down")
            with _ignore(errno.EADDRNOTAVAIL):
                host.flush_addr(index=found[1])
        except (NetlinkError, OSError) as e:
            raise DatapathError(f"put {found[0]} ({mac}) down on the node", e) from e

    def check(self, link: ExclusiveLink, netns_path: str) -> list[str]:
        """What is missing or wrong in the pod (empty: all in place)."""
        if not os.path.exists(netns_path):
            return [f"netns {netns_path} missing"]
        with _in(netns_path) as ipr:
            index = _by_mac(ipr, link.mac)
            if index is None:
                return [f"ENI {link.mac} not in {netns_path}"]
            problems = []
            addrs = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                     for a in ipr.get_addr(index=index, family=socket.AF_INET)]
            if (link.ip, link.prefixlen) not in addrs:
                problems.append(f"{link.ifname} lacks {link.ip}/{link.prefixlen} (has {addrs})")
            if not [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                    if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY") == link.gateway]:
                problems.append(f"default route via {link.gateway} missing")
            return problems

    def in_netns(self, mac: str, netns_path: str) -> bool:
        """Whether the ENI's link is in the pod's netns already (ADD again)."""
        if not netns_path or not os.path.exists(netns_path):
            return False
        try:
            return self._index_in(netns_path, mac) is not None
        except (NetlinkError, OSError):
            return False

    def addressing(self, mac: str, netns_path: str, ip: str) -> tuple[int, str]:
        """The prefix length of ``ip`` and the default gateway the pod's link has now
        ((32, "") when it has none): what CHECK compares with when the ENI's resource
        is not known."""
        prefixlen, gateway = 32, ""
        if not os.path.exists(netns_path):
            return prefixlen, gateway
        with _in(netns_path) as ipr:
            index = _by_mac(ipr, mac)
            if index is None:
                return prefixlen, gateway
            for a in ipr.get_addr(index=index, family=socket.AF_INET):
                if a.get_attr("IFA_ADDRESS") == ip:
                    prefixlen = int(a["prefixlen"])
            for r in ipr.get_routes(family=socket.AF_INET, table=254):
                if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY"):
                    gateway = str(r.get_attr("RTA_GATEWAY"))
        return prefixlen, gateway

    def _index_in(self, netns_path: str, mac: str) -> int | None:
        with _in(netns_path) as ipr:
            return _by_mac(ipr, mac)


@contextlib.contextmanager
def _in(netns_path: str) -> Iterator[IPRoute]:
    """A netlink handle in the netns at ``netns_path``, closed after use."""
    ipr = IPRoute(use_socket=netns.netlink_socket(netns_path))
    try:
        yield ipr
    finally:
        ipr.close()


def _by_mac(ipr: IPRoute, mac: str) -> int | None:
    mac = mac.lower()
    for link in ipr.get_links():
        if (link.get_attr("IFLA_ADDRESS") or "").lower() == mac:
            return int(link["index"])
    return None
