"""Several rtnetlink requests in one ``send``: the pod hot path of ADD.

Wiring a pod takes seven changes in two namespaces after its veth exists. pyroute2's
synchronous ``IPRoute`` spends about 0.3 ms of Python per request driving its event
loop and parsing the reply; here the requests are still pyroute2's messages (its
encoders, its attribute names) but go out together: the kernel runs them in order
within the one ``send`` and answers each with an acknowledgement, which we read
back with ``struct`` alone. A request that fails does not stop the ones after it,
so callers put them in an order where that is harmless and roll back on error.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTM_NEWRULE,
)
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

_NLMSGHDR = struct.Struct("=IHHII")
_ERRNO = struct.Struct("=i")
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks carry only the request's header, not its whole body
FR_ACT_TO_TBL = 1
RTN_UNICAST = 1
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
IFF_UP = 1
RT_TABLE_COMPAT = 252  # the header's 8-bit table field when the real one is in an attribute
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
_REPLACE = _CREATE | NLM_F_REPLACE


@dataclass
class Request:
    """One encoded request, the errnos its caller accepts, and what it does (for errors)."""

    what: str
    msg: Any
    ok: tuple[int, ...] = ()
    seq: int = field(default=0, init=False)


def _req(what: str, msg: Any, kind: int, flags: int, ok: tuple[int, ...] = ()) -> Request:
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    return Request(what, msg, ok)


def _header_table(table: int) -> int:
    return table if table < 256 else RT_TABLE_COMPAT


def addr(index: int, ip: str, prefixlen: int) -> Request:
    m = ifaddrmsg()
    m["family"], m["prefixlen"], m["index"] = socket.AF_INET, prefixlen, index
    m["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    return _req(f"address {ip}/{prefixlen}", m, RTM_NEWADDR, _CREATE | NLM_F_EXCL)


def veth(name: str, mac: str, mtu: int, peer: str, peer_mac: str, peer_ns_fd: int) -> Request:
    """A veth pair, ``name`` up here and ``peer`` created straight into another netns."""
    m = ifinfmsg()
    m["flags"] = m["change"] = IFF_UP
    peer_attrs = [("IFLA_IFNAME", peer), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", peer_mac),
                  ("IFLA_NET_NS_FD", peer_ns_fd)]
    m["attrs"] = [
        ("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", mac),
        ("IFLA_LINKINFO", {"attrs": [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer_attrs})]}),
        ]}),
    ]
    return _req(f"veth {name} <-> {peer}", m, RTM_NEWLINK, _CREATE | NLM_F_EXCL)


def link_up(index: int) -> Request:
    m = ifinfmsg()
    m["index"], m["flags"], m["change"] = index, IFF_UP, IFF_UP
    return _req("link up", m, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK)


def neigh(index: int, ip: str, lladdr: str, state: int) -> Request:
    m = ndmsg()
    m["family"], m["ifindex"], m["state"] = socket.AF_INET, index, state
    m["attrs"] = [("NDA_DST", ip), ("NDA_LLADDR", lladdr)]
    return _req(f"neighbour {ip} lladdr {lladdr}", m, RTM_NEWNEIGH, _REPLACE)


def route(dst: str, dst_len: int, oif: int, table: int, *, scope: int = RT_SCOPE_UNIVERSE,
          gateway: str | None = None, flags: int = 0) -> Request:
    m = rtmsg()
    m["family"], m["dst_len"], m["scope"], m["flags"] = socket.AF_INET, dst_len, scope, flags
    m["type"], m["proto"], m["table"] = RTN_UNICAST, RTPROT_BOOT, _header_table(table)
    attrs: list[tuple[str, Any]] = [("RTA_TABLE", table), ("RTA_OIF", oif)]
    if dst_len:
        attrs.append(("RTA_DST", dst))
    if gateway:
        attrs.append(("RTA_GATEWAY", gateway))
    m["attrs"] = attrs
    via = f" via {gateway}" if gateway else ""
    return _req(f"route {dst}/{dst_len}{via} table {table}", m, RTM_NEWROUTE, _REPLACE)


def rule(priority: int, table: int, *, src: str | None = None, dst: str | None = None,
         ok: tuple[int, ...] = ()) -> Request:
    m = fibmsg()
    m["family"], m["action"] = socket.AF_INET, FR_ACT_TO_TBL
    m["table"] = _header_table(table)
    attrs: list[tuple[str, Any]] = [("FRA_PRIORITY", priority), ("FRA_TABLE", table)]
    if src:
        m["src_len"] = 32
        attrs.append(("FRA_SRC", src))
    if dst:
        m["dst_len"] = 32
        attrs.append(("FRA_DST", dst))
    m["attrs"] = attrs
    sel = f"from {src}" if src else f"to {dst}"
    return _req(f"rule {priority} {sel} lookup {table}", m, RTM_NEWRULE,
                _CREATE | NLM_F_EXCL, ok)


def open_socket() -> socket.socket:
    """An rtnetlink socket in the calling thread's current netns, acks capped."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.settimeout(5.0)
    return sock


_seqs = itertools.count(1)  # ``next`` on it is atomic: threads share it safely


def send(sock: socket.socket, requests: list[Request]) -> None:
    """Run ``requests`` in order; raise NetlinkError for the first one that failed
    with an errno its caller did not accept (the others still ran)."""
    chunks = []
    for r in requests:
        r.seq = r.msg["header"]["sequence_number"] = next(_seqs) & 0x7FFFFFFF
        r.msg.reset()
        r.msg.encode()
        chunks.append(r.msg.data)
    sock.send(b"".join(chunks))
    pending = {r.seq: r for r in requests}
    failed: list[tuple[Request, int]] = []
    while pending:
        data = sock.recv(65536)
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
            if length < _NLMSGHDR.size:
                break
            done = pending.pop(seq, None)
            if done is not None and kind == NLMSG_ERROR:
                err = -_ERRNO.unpack_from(data, off + _NLMSGHDR.size)[0]
                if err and err not in done.ok:
                    failed.append((done, err))
            off += (length + 3) & ~3
    if failed:
        first, err = min(failed, key=lambda f: f[0].seq)
        raise NetlinkError(err, f"{first.what}: {os.strerror(err)}")
