"""Batched rtnetlink requests against the real kernel, in a throwaway netns: they apply
in order, each failure is reported by what it was, accepted errnos pass, and a failed
request does not stop the ones after it."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni_plugin.agent import netns, nlbatch

pytestmark = [pytest.mark.netns]


@pytest.fixture
def ns(root: None) -> Iterator[str]:
    name = f"nlb{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "a0", "type", "veth", "peer", "b0"],
                   check=True)
    try:
        yield netns.netns_path(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _in(path: str) -> tuple[socket.socket, IPRoute, int]:
    with netns.entered(path):
        sock = nlbatch.open_socket()
        idx = socket.if_nametoindex("a0")
    return sock, IPRoute(use_socket=netns.netlink_socket(path)), idx


def test_a_batch_applies_in_order(ns: str) -> None:
    sock, ipr, idx = _in(ns)
    with sock, ipr:
        nlbatch.send(sock, [
            nlbatch.addr(idx, "10.1.2.3", 32),
            nlbatch.link_up(idx),
            nlbatch.neigh(idx, "169.254.1.1", "02:11:22:33:44:55", 0x80),
            nlbatch.route("0.0.0.0", 0, idx, 254, gateway="169.254.1.1", flags=4),
            nlbatch.route("10.9.0.7", 32, idx, 1005, scope=253),
            nlbatch.rule(2048, 1005, src="10.1.2.3"),
            nlbatch.rule(512, 254, dst="10.1.2.3"),
        ])
        assert [a.get("address") for a in ipr.get_addr(index=idx)] == ["10.1.2.3"]
        assert ipr.get_links(idx)[0].get("flags") & 1
        neigh = ipr.get_neighbours(ifindex=idx, dst="169.254.1.1")
        assert neigh[0].get("lladdr") == "02:11:22:33:44:55" and neigh[0]["state"] == 0x80
        default = [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                   if r["dst_len"] == 0]
        assert default[0].get("gateway") == "169.254.1.1" and default[0].get("oif") == idx
        routes = ipr.get_routes(family=socket.AF_INET, table=1005)
        assert [(r.get("dst"), r["scope"], r.get("table")) for r in routes] == [
            ("10.9.0.7", 253, 1005)]
        rules = {(r.get("priority"), r.get("src"), r.get("dst"), r.get("table"))
                 for r in ipr.get_rules(family=socket.AF_INET)}
        assert {(2048, "10.1.2.3", None, 1005), (512, None, "10.1.2.3", 254)} <= rules


def test_failures_are_named_and_do_not_stop_later_requests(ns: str) -> None:
    sock, ipr, idx = _in(ns)
    with sock, ipr:
        again = nlbatch.rule(2048, 1005, src="10.1.2.3")
        nlbatch.send(sock, [again])
        with pytest.raises(NetlinkError) as exists:  # a request can be sent again
            nlbatch.send(sock, [again])
        assert exists.value.code == errno.EEXIST and "rule 2048 from 10.1.2.3" in str(
            exists.value)
        # an accepted errno passes
        nlbatch.send(sock, [nlbatch.rule(2048, 1005, src="10.1.2.3", ok=(errno.EEXIST,))])
        with pytest.raises(NetlinkError) as exc:
            nlbatch.send(sock, [
                nlbatch.route("10.9.0.8", 32, 999_999, 254),  # no such device
                nlbatch.rule(2048, 1005, src="10.1.2.3"),  # exists
                nlbatch.rule(512, 254, dst="10.1.2.4"),
            ])
        assert exc.value.code == errno.ENODEV
        assert "route 10.9.0.8/32 table 254" in str(exc.value)
        rules = [r for r in ipr.get_rules(family=socket.AF_INET)
                 if r.get("priority") in (512, 2048)]
        assert sorted((r.get("priority"), r.get("src") or r.get("dst")) for r in rules) == [
            (512, "10.1.2.4"), (2048, "10.1.2.3")]  # no duplicate, the last one applied
        # the socket is still in step: the next batch's acks are its own
        nlbatch.send(sock, [nlbatch.link_up(idx)])
