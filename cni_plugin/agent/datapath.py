"""The node datapath (docs/node.md, Datapath): ENI links and tables, pod veths, routes and rules.

Pod netns: ``<ifname>`` with ``podIP/32``, ``default via 169.254.1.1 onlink`` and a
permanent neighbour 169.254.1.1 -> host veth MAC. Host ("node") netns: the veth's
host end (created there directly, its peer created straight into the pod netns),
``podIP/32 dev <veth> scope link`` in main, rule 512 ``to podIP lookup main``, rule
2048 ``from podIP lookup <1000 + ENI ifindex>``; that table holds
``default via <vSwitch gateway> dev <eni> onlink``.

Every call is idempotent; ``teardown_pod`` never fails because something is gone.
Netlink sockets are per thread (pyroute2 objects are not thread-safe); the host's
(an ``IPRoute`` and a plain socket for batches) are kept for the thread's life, a
pod's is opened per call. ADD's changes go out in batches (``nlbatch``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni_plugin import contract
from cni_plugin.agent import netns, nlbatch

RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80


def _random_mac() -> str:
    """A random locally administered unicast MAC (chosen here, so ADD need not ask)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


class DatapathError(Exception):
    """A netlink step failed; ``step`` says which, for the CNI error message."""

    def __init__(self, step: str, err: BaseException) -> None:
        super().__init__(f"{step}: {err}")
        self.step = step


@dataclass(frozen=True)
class EniLink:
    ifname: str
    index: int
    table: int
    mtu: int


@dataclass(frozen=True)
class PodLink:
    """What ADD reports: the two ends of the pod's veth."""

    host_veth: str
    host_mac: str
    pod_mac: str
    mtu: int


def _ignore(*codes: int) -> Any:
    """Suppress NetlinkErrors with these errnos (gone already, exists already)."""
    class _Ctx(contextlib.AbstractContextManager[None]):
        def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
            return isinstance(ev, NetlinkError) and ev.code in codes
    return _Ctx()


class Datapath:
    def __init__(self, host_netns: str | None = None) -> None:
        self.host_netns = host_netns
        self.host_path = netns.netns_path(host_netns) if host_netns else None
        self._local = threading.local()

    # -- sockets -------------------------------------------------------------------------

    def host(self) -> IPRoute:
        ipr: IPRoute | None = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = IPRoute(use_socket=netns.netlink_socket(self.host_path))
            self._local.ipr = ipr
        return ipr

    def _drop_host_socket(self) -> None:
        ipr = getattr(self._local, "ipr", None)
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()
            self._local.ipr = None

    @contextlib.contextmanager
    def _pod(self, netns_path: str, ifname: str | None = None
             ) -> Iterator[tuple[IPRoute, int | None]]:
        """A netlink handle in the pod netns, and ``ifname``'s index there (looked up
        while the thread is inside: cheaper than a netlink round trip)."""
        with netns.entered(netns_path):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, netns.NETLINK_ROUTE)
            try:
                index = socket.if_nametoindex(ifname) if ifname else None
            except OSError:
                index = None
        # Reuse this thread's event loop (the host handle's): a new loop per pod costs
        # about half a millisecond to create and tear down.
        loop = getattr(getattr(self.host(), "asyncore", None), "event_loop", None)
        ipr = IPRoute(use_socket=sock, use_event_loop=loop) if loop else IPRoute(
            use_socket=sock)
        try:
            yield ipr, index
        finally:
            ipr.close()

    def _host_index(self, ifname: str) -> int:
        with netns.entered(self.host_path):
            return socket.if_nametoindex(ifname)

    # -- node ----------------------------------------------------------------------------

    def enable_forwarding(self) -> None:
        netns.write_sysctl(self.host_path, "net/ipv4/ip_forward", "1")

    def route_node_replies(self) -> str:
        """Send pods' replies on connections that came in through the primary ENI (the
        interface of the main table's default route) back out of it: connmark those
        connections, restore the mark on packets from pod veths, and look marked packets
        up in main ahead of the per-ENI rules. Returns the primary interface's name."""
        ipr = self.host()
        try:
            default = [r for r in ipr.get_routes(family=socket.AF_INET, table=254)
                       if not r.get("dst_len") and r.get_attr("RTA_OIF")]
            if not default:
                raise DatapathError("find the primary interface",
                                    OSError("no default route in the main table"))
            primary = ipr.get_links(default[0].get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME")
        except (NetlinkError, OSError) as e:
            raise DatapathError("find the primary interface", e) from e
        mark = f"{contract.CONNMARK_NODE:#x}/{contract.CONNMARK_NODE:#x}"
        rules = [
            ["-i", primary, "-m", "addrtype", "--dst-type", "LOCAL", "--limit-iface-in",
             "-m", "comment", "--comment", "eniway: connection to the node via its primary ENI",
             "-j", "CONNMARK", "--set-xmark", mark],
            ["-i", f"{contract.VETH_PREFIX}+", "-m", "comment", "--comment",
             "eniway: a pod's packet takes its connection's mark",
             "-j", "CONNMARK", "--restore-mark", "--nfmask", f"{contract.CONNMARK_NODE:#x}",
             "--ctmask", f"{contract.CONNMARK_NODE:#x}"],
        ]
        with netns.entered(self.host_path):  # iptables forked from here works in that netns
            for rule in rules:
                base = ["iptables", "-w", "5", "-t", "mangle"]
                if subprocess.run([*base, "-C", "PREROUTING", *rule],
                                  capture_output=True).returncode == 0:
                    continue
                res = subprocess.run([*base, "-A", "PREROUTING", *rule],
                                     capture_output=True, text=True)
                if res.returncode != 0:
                    raise DatapathError("add the connmark rule for node replies",
                                        OSError(res.stderr.strip()))
        try:
            ipr.rule("add", fwmark=contract.CONNMARK_NODE, fwmask=contract.CONNMARK_NODE,
                     table=254, priority=contract.RULE_PRIORITY_NODE_REPLY)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise DatapathError("add the rule for node replies", e) from e
        return str(primary)

    def find_link_by_mac(self, mac: str) -> tuple[str, int] | None:
        mac = mac.lower()
        for link in self.host().get_links():
            if (link.get("address") or "").lower() == mac:
                return str(link.get("ifname")), int(link["index"])
        return None

    def ensure_eni(self, mac: str, mtu: int, gateway: str) -> EniLink | None:
        """Bring the ENI with this MAC up with ``mtu``, turn rp_filter off on it and
        keep its table's default route. None if no such link (attach in progress)."""
        found = self.find_link_by_mac(mac)
        if found is None:
            return None
        ifname, index = found
        ipr = self.host()
        try:
            ipr.link("set", index=index, mtu=mtu, state="up")
            # Replies to pods arrive on a secondary ENI whose subnet's connected route
            # points at the primary: strict reverse-path filtering would drop them.
            strict = netns.read_sysctl(self.host_path, "net/ipv4/conf/all/rp_filter") == "1"
            netns.write_sysctl(self.host_path, f"net/ipv4/conf/{ifname}/rp_filter",
                               "2" if strict else "0")
            table = self._eni_table(index, gateway)
        except (NetlinkError, OSError) as e:
            raise DatapathError(f"set up ENI {ifname} ({mac})", e) from e
        return EniLink(ifname, index, table, mtu)

    def ensure_primary(self, mac: str, gateway: str) -> EniLink | None:
        """The primary ENI, where its secondary IPs serve pods (EC2): only its table's
        default route is kept. The link itself carries the node's own address and default
        route: its MTU, addresses, state and rp_filter stay as the system set them."""
        found = self.find_link_by_mac(mac)
        if found is None:
            return None
        ifname, index = found
        try:
            mtu = int(self.host().get_links(index)[0].get_attr("IFLA_MTU"))
            table = self._eni_table(index, gateway)
        except (NetlinkError, OSError) as e:
            raise DatapathError(f"set up the primary ENI {ifname} ({mac}) for pods", e) from e
        return EniLink(ifname, index, table, mtu)

    def _eni_table(self, index: int, gateway: str) -> int:
        """An ENI's table: the default route via the vSwitch gateway out of that ENI (a
        pod's packets leave through the ENI that owns its IP: the VPC's source check)."""
        table = contract.eni_table(index)
        self.host().route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index, table=table,
                          flags=RTNH_F_ONLINK)
        return table

    # -- pods ----------------------------------------------------------------------------

    def setup_pod(self, netns_path: str, ifname: str, veth: str, ip: str, table: int,
                  mtu: int) -> PodLink:
        """Wire one pod interface. On failure raise DatapathError; the caller rolls
        back with ``teardown_pod`` (deleting the host veth removes its peer too)."""
        host = self.host()
        step = "open pod netns"
        try:
            ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise DatapathError(step, e) from e
        host_mac, pod_mac = _random_mac(), _random_mac()
        try:
            step = f"create veth {veth} <-> {ifname}"
            create = [nlbatch.veth(veth, host_mac, mtu, ifname, pod_mac, ns_fd)]
            try:
                self._send_host(create)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
                # A veth of an earlier sandbox of this pod (same name) that is still
                # being torn down: ours now.
                with _ignore(errno.ENODEV):
                    host.link("del", ifname=veth)
                self._send_host(create)
        except (NetlinkError, OSError) as e:
            raise DatapathError(step, e) from e
        finally:
            os.close(ns_fd)
        try:
            step = f"look up {veth}"
            host_idx = self._host_index(veth)
            step = f"configure {ifname} in {netns_path}"
            with netns.entered(netns_path):
                sock = nlbatch.open_socket()
                try:
                    idx = socket.if_nametoindex(ifname)
                except OSError:
                    sock.close()
                    raise
            with sock:  # link up before the onlink default route needs it
                nlbatch.send(sock, [
                    nlbatch.addr(idx, ip, 32),
                    nlbatch.link_up(idx),
                    nlbatch.neigh(idx, contract.POD_GATEWAY, host_mac, NUD_PERMANENT),
                    nlbatch.route("0.0.0.0", 0, idx, RT_TABLE_MAIN,
                                  gateway=contract.POD_GATEWAY, flags=RTNH_F_ONLINK),
                ])
            step = "host route and rules"
            self._send_host(self._host_requests(host_idx, ip, table))
        except (NetlinkError, OSError) as e:
            raise DatapathError(step, e) from e
        return PodLink(veth, host_mac, pod_mac, mtu)

    @staticmethod
    def _host_requests(host_idx: int, ip: str, table: int) -> list[nlbatch.Request]:
        """The pod's host route and its two rules (rules already there are fine)."""
        return [
            nlbatch.route(ip, 32, host_idx, RT_TABLE_MAIN, scope=RT_SCOPE_LINK),
            nlbatch.rule(contract.RULE_PRIORITY_TO_POD, RT_TABLE_MAIN, dst=ip,
                         ok=(errno.EEXIST,)),
            nlbatch.rule(contract.RULE_PRIORITY_FROM_POD, table, src=ip, ok=(errno.EEXIST,)),
        ]

    def _send_host(self, requests: list[nlbatch.Request]) -> None:
        """Batch ``requests`` on this thread's host socket (a new one after an error:
        a timed-out socket may still hold late acks)."""
        sock: socket.socket | None = getattr(self._local, "batch", None)
        if sock is None:
            with netns.entered(self.host_path):
                sock = nlbatch.open_socket()
            self._local.batch = sock
        try:
            nlbatch.send(sock, requests)
        except OSError:
            sock.close()
            self._local.batch = None
            raise

    def repair_host(self, veth: str, ip: str, table: int) -> bool:
        """Re-add a live pod's host route and rules if missing; False if its veth is gone."""
        host = self.host()
        idx = host.link_lookup(ifname=veth)
        if not idx:
            return False
        # The ENI may have been re-attached since: new ifindex, new table.
        for rule in self._rules(host, contract.RULE_PRIORITY_FROM_POD, src=ip):
            if rule.get("table") != table:
                self._del_rule(host, rule)
        self._send_host(self._host_requests(idx[0], ip, table))
        return True

    def detach_pod(self, veth: str, ip: str, table: int) -> int | None:
        """Cut the pod off the host (host route and both rules) and return its veth's
        ifindex; deleting the veth itself (slow: the kernel waits for an RCU grace
        period) is left to ``delete_link_index``."""
        host = self.host()
        try:
            found = host.link_lookup(ifname=veth)
            with _ignore(errno.ESRCH, errno.ENOENT):
                host.route("del", dst=f"{ip}/32", table=RT_TABLE_MAIN)
            with _ignore(errno.ENOENT, errno.ESRCH):
                host.rule("del", family=socket.AF_INET, priority=contract.RULE_PRIORITY_TO_POD,
                          dst=ip, dst_len=32, table=RT_TABLE_MAIN)
            with _ignore(errno.ENOENT, errno.ESRCH):
                host.rule("del", family=socket.AF_INET,
                          priority=contract.RULE_PRIORITY_FROM_POD, src=ip, src_len=32,
                          table=table)
        except (NetlinkError, OSError) as e:
            self._drop_host_socket()
            raise DatapathError(f"detach {veth} ({ip})", e) from e
        return int(found[0]) if found else None

    def teardown_pod(self, veth: str, ip: str) -> None:
        """Remove the pod's veth (its peer and host route go with it) and every rule
        of its IP, whatever table they point at."""
        host = self.host()
        try:
            with _ignore(errno.ENODEV):
                host.link("del", ifname=veth)
            with _ignore(errno.ESRCH, errno.ENOENT):
                host.route("del", dst=f"{ip}/32", table=RT_TABLE_MAIN)
            self.delete_rules_for(ip)
        except (NetlinkError, OSError) as e:
            self._drop_host_socket()
            raise DatapathError(f"tear down {veth} ({ip})", e) from e

    def check_pod(self, netns_path: str, ifname: str, veth: str, ip: str,
                  table: int) -> list[str]:
        """What is missing or wrong for this pod (empty list: all in place)."""
        problems: list[str] = []
        host = self.host()
        idx = host.link_lookup(ifname=veth)
        if not idx:
            return [f"host veth {veth} missing"]
        if not [r for r in host.get_routes(family=socket.AF_INET, dst=ip, table=RT_TABLE_MAIN)
                if r.get("oif") == idx[0] and r["dst_len"] == 32]:
            problems.append(f"host route {ip}/32 dev {veth} missing")
        if not self._rules(host, contract.RULE_PRIORITY_TO_POD, dst=ip):
            problems.append(f"rule {contract.RULE_PRIORITY_TO_POD} to {ip} missing")
        if not [r for r in self._rules(host, contract.RULE_PRIORITY_FROM_POD, src=ip)
                if r.get("table") == table]:
            problems.append(f"rule {contract.RULE_PRIORITY_FROM_POD} from {ip} "
                            f"lookup {table} missing")
        if not os.path.exists(netns_path):
            return [*problems, f"netns {netns_path} missing"]
        with self._pod(netns_path, ifname) as (pod, pidx):
            if pidx is None:
                return [*problems, f"{ifname} missing in {netns_path}"]
            addrs = [a.get("address") for a in pod.get_addr(index=pidx, family=socket.AF_INET)]
            if ip not in addrs:
                problems.append(f"{ifname} lacks {ip}/32 (has {addrs})")
            if not [r for r in pod.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN)
                    if r["dst_len"] == 0 and r.get("gateway") == contract.POD_GATEWAY]:
                problems.append(f"default route via {contract.POD_GATEWAY} missing")
        return problems

    # -- inventory (GC) ------------------------------------------------------------------

    def pod_rule_ips(self) -> set[str]:
        """IPs that have a rule at priority 512 or 2048 in the host netns."""
        ips: set[str] = set()
        for rule in self.host().get_rules(family=socket.AF_INET):
            prio = rule.get("priority")
            if prio == contract.RULE_PRIORITY_TO_POD and rule["dst_len"] == 32:
                ips.add(str(rule.get("dst")))
            elif prio == contract.RULE_PRIORITY_FROM_POD and rule["src_len"] == 32:
                ips.add(str(rule.get("src")))
        return ips

    def pod_veths(self) -> dict[str, int]:
        """Host veths named like ours (``eni`` + 11 hex chars): name -> ifindex."""
        names: dict[str, int] = {}
        for link in self.host().get_links():
            name = str(link.get("ifname") or "")
            if (len(name) == len(contract.VETH_PREFIX) + 11
                    and name.startswith(contract.VETH_PREFIX)
                    and all(c in "0123456789abcdef" for c in name[len(contract.VETH_PREFIX):])):
                names[name] = int(link["index"])
        return names

    def describe_table(self, table: int) -> dict[str, list[str]]:
        """An ENI's route table and the rules that lead into it, as ``ip`` prints them
        (for ``eniway-agent debug``; read only)."""
        host = self.host()
        names = {int(link["index"]): str(link.get("ifname")) for link in host.get_links()}
        routes = []
        for r in host.get_routes(family=socket.AF_INET, table=table):
            dst = f"{r.get('dst')}/{r['dst_len']}" if r.get("dst") else "default"
            via = f" via {r.get('gateway')}" if r.get("gateway") else ""
            dev = names.get(int(r.get("oif") or 0), "?")
            routes.append(f"{dst}{via} dev {dev}")
        rules = []
        for rule in host.get_rules(family=socket.AF_INET):
            if rule.get("table") != table:
                continue
            src, dst = rule.get("src"), rule.get("dst")
            sel = " ".join(x for x in (f"from {src}/{rule['src_len']}" if src else "",
                                       f"to {dst}/{rule['dst_len']}" if dst else "") if x)
            rules.append(f"{rule.get('priority')}: {sel or 'from all'} lookup {table}")
        return {"routes": routes, "rules": rules}

    def delete_link_index(self, index: int) -> None:
        with _ignore(errno.ENODEV):
            self.host().link("del", index=index)

    def delete_rules_for(self, ip: str) -> None:
        """Every rule at 512/2048 for ``ip`` (one dump; duplicates after a crash too)."""
        host = self.host()
        for rule in host.get_rules(family=socket.AF_INET):
            prio = rule.get("priority")
            if ((prio == contract.RULE_PRIORITY_TO_POD and rule.get("dst") == ip
                 and rule["dst_len"] == 32)
                    or (prio == contract.RULE_PRIORITY_FROM_POD and rule.get("src") == ip
                        and rule["src_len"] == 32)):
                self._del_rule(host, rule)

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _rules(host: IPRoute, priority: int, **match: str) -> list[Any]:
        out = []
        for rule in host.get_rules(family=socket.AF_INET):
            if rule.get("priority") != priority:
                continue
            if all(rule.get(k) == v and rule[f"{k}_len"] == 32 for k, v in match.items()):
                out.append(rule)
        return out

    @staticmethod
    def _del_rule(host: IPRoute, rule: Any) -> None:
        kw: dict[str, Any] = {"family": socket.AF_INET, "priority": rule.get("priority"),
                              "table": rule.get("table")}
        for k in ("src", "dst"):
            if rule[f"{k}_len"]:
                kw[k], kw[f"{k}_len"] = rule.get(k), rule[f"{k}_len"]
        with _ignore(errno.ENOENT, errno.ESRCH):
            host.rule("del", **kw)
