"""Network mode (root): the VPC as a real network.

One network namespace per VPC acts as the VPC router. Each vSwitch gets a port-less
bridge there (kernels without the dummy module have bridges) holding its gateway address
(broadcast - 2, as in ECS). Attaching an ENI creates a veth pair: the VPC end in the VPC
namespace, the other end, carrying the ENI's MAC, in the instance's namespace (named
``eth<device index>``). Every IP of the ENI (primary and secondaries) gets a /32 route
and a permanent neighbour entry towards that veth. The VPC ends answer ARP for every
other address (proxy ARP), as the VPC's virtual switch does, so instances on one vSwitch
reach each other directly.

Source/destination check: an nftables set in the VPC namespace lists (veth, IP) pairs
an ENI owns; a packet entering the VPC from an ENI with any other source is dropped, so
a pod route that sends traffic out of the wrong ENI loses packets, as in a real VPC.

The primary ENI (eth0) gets its primary IP and a default route via the gateway inside
the instance namespace, as the guest's DHCP client would do; secondary ENIs are left
down and unconfigured, for the node agent to set up.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from .engine import Eni, Instance, Vpc, VSwitch

log = logging.getLogger("eniway_cloudsim.net")

NFT_TABLE = "csim"
NFT_RULESET = f"""
table ip {NFT_TABLE} {{
  set owned {{ type ifname . ipv4_addr; }}
  chain sdcheck {{
    type filter hook prerouting priority -300; policy accept;
    iifname . ip saddr != @owned counter drop
  }}
}}
"""


def _short(text: str, n: int = 10) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def _run(args: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    p = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


class NetMode:
    def __init__(self, prefix: str = "csim-") -> None:
        if os.geteuid() != 0:
            raise PermissionError("network mode needs root")
        self.prefix = prefix
        self._internet: Any = None  # internet.Internet, made on the first EIP

    # --- names -------------------------------------------------------------------------

    def vpc_ns(self, vpc_id: str) -> str:
        return self.prefix + vpc_id

    @staticmethod
    def vswitch_link(vswitch_id: str) -> str:
        return "vsw" + _short(vswitch_id)

    @staticmethod
    def vpc_link(eni_id: str) -> str:
        return "e" + _short(eni_id, 12)

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _ns_exists(ns: str) -> bool:
        return os.path.exists(f"/run/netns/{ns}")

    @staticmethod
    def _link_exists(ns: str, name: str) -> bool:
        p = subprocess.run(["ip", "-n", ns, "link", "show", "dev", name],
                           capture_output=True, timeout=30)
        return p.returncode == 0

    @staticmethod
    def _ip_batch(ns: str, lines: Sequence[str]) -> None:
        if lines:
            _run(["ip", "-n", ns, "-force", "-batch", "-"], "\n".join(lines) + "\n", check=False)

    def _ensure_ns(self, ns: str) -> bool:
        if self._ns_exists(ns):
            return False
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return True

    # --- Network protocol (engine.Network) -----------------------------------------------

    def ensure_vpc(self, vpc: Vpc) -> str:
        ns = self.vpc_ns(vpc.vpc_id)
        if self._ensure_ns(ns):
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.default.rp_filter=0"):
                _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", key])
        has_table = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip",
                                    NFT_TABLE], capture_output=True, timeout=30).returncode == 0
        if not has_table:
            _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], NFT_RULESET)
        return ns

    def ensure_vswitch(self, vpc: Vpc, vsw: VSwitch) -> None:
        ns = self.ensure_vpc(vpc)
        link = self.vswitch_link(vsw.vswitch_id)
        if self._link_exists(ns, link):
            return
        prefix = ipaddress.ip_network(vsw.cidr).prefixlen
        _run(["ip", "-n", ns, "link", "add", link, "type", "bridge"])
        _run(["ip", "-n", ns, "addr", "add", f"{vsw.gateway}/{prefix}", "dev", link])
        _run(["ip", "-n", ns, "link", "set", link, "up"])

    def ensure_instance(self, inst: Instance) -> None:
        if inst.netns and self._ensure_ns(inst.netns):
            inst.netns_created = True

    def release_instance(self, inst: Instance) -> None:
        if inst.netns and inst.netns_created and self._ns_exists(inst.netns):
            _run(["ip", "netns", "del", inst.netns], check=False)

    def plug(self, eni: Eni, inst: Instance, vsw: VSwitch) -> None:
        if not inst.netns:
            return
        vns = self.vpc_ns(eni.vpc_id)
        vlink = self.vpc_link(eni.eni_id)
        if self._link_exists(vns, vlink):
            return
        self.ensure_instance(inst)
        name = f"eth{eni.device_index}"
        if self._link_exists(inst.netns, name):
            name = f"ecs{_short(eni.eni_id, 8)}"
        _run(["ip", "link", "add", vlink, "netns", vns, "type", "veth", "peer", "name", name,
              "netns", inst.netns, "address", eni.mac])
        _run(["ip", "netns", "exec", vns, "sysctl", "-q", "-w",
              f"net.ipv4.conf.{vlink}.rp_filter=0", f"net.ipv4.conf.{vlink}.proxy_arp=1",
              f"net.ipv4.neigh.{vlink}.proxy_delay=0"])  # answer at once, not after ~0.8 s
        _run(["ip", "-n", vns, "link", "set", vlink, "up"])
        if eni.type == "Primary":
            prefix = ipaddress.ip_network(vsw.cidr).prefixlen
            self._ip_batch(inst.netns, [
                f"link set {name} up",
                f"addr replace {eni.primary_ip}/{prefix} dev {name}",
                f"route replace default via {vsw.gateway} dev {name}",
            ])

    def unplug(self, eni: Eni, inst: Instance) -> None:
        vns = self.vpc_ns(eni.vpc_id)
        vlink = self.vpc_link(eni.eni_id)
        if self._ns_exists(vns):
            self._set_owned(vns, vlink, [])
            if self._link_exists(vns, vlink):
                _run(["ip", "-n", vns, "link", "del", vlink], check=False)

    def _owned(self, vns: str, vlink: str) -> set[str]:
        out = _run(["ip", "netns", "exec", vns, "nft", "-j", "list", "set", "ip", NFT_TABLE,
                    "owned"], check=False)
        owned: set[str] = set()
        try:
            for item in json.loads(out).get("nftables", []):
                for elem in item.get("set", {}).get("elem", []) or []:
                    dev, ip = elem["concat"]
                    if dev == vlink:
                        owned.add(ip)
        except (ValueError, KeyError, TypeError):
            pass
        return owned

    def _set_owned(self, vns: str, vlink: str, ips: Sequence[str]) -> None:
        current = self._owned(vns, vlink)
        want = set(ips)
        cmds = []
        if want - current:
            elems = ", ".join(f'"{vlink}" . {ip}' for ip in sorted(want - current))
            cmds.append(f"add element ip {NFT_TABLE} owned {{ {elems} }}")
        if current - want:
            elems = ", ".join(f'"{vlink}" . {ip}' for ip in sorted(current - want))
            cmds.append(f"delete element ip {NFT_TABLE} owned {{ {elems} }}")
        if cmds:
            _run(["ip", "netns", "exec", vns, "nft", "-f", "-"], "\n".join(cmds) + "\n")

    def set_ips(self, eni: Eni, inst: Instance) -> None:
        if not inst.netns:
            return
        vns = self.vpc_ns(eni.vpc_id)
        vlink = self.vpc_link(eni.eni_id)
        if not self._link_exists(vns, vlink):
            return
        routes = _run(["ip", "-n", vns, "-4", "route", "show", "dev", vlink], check=False)
        current = {line.split()[0].split("/")[0] for line in routes.splitlines() if line.strip()}
        want = set(eni.all_ips)
        lines = []
        for ip in sorted(want - current):
            lines += [f"route replace {ip}/32 dev {vlink}",
                      f"neigh replace {ip} lladdr {eni.mac} dev {vlink} nud permanent"]
        for ip in sorted(current - want):
            lines += [f"route del {ip}/32 dev {vlink}", f"neigh del {ip} dev {vlink}"]
        self._ip_batch(vns, lines)
        self._set_owned(vns, vlink, eni.all_ips)

    # --- EIPs (internet.py) -------------------------------------------------------------

    @property
    def internet(self) -> Any:
        if self._internet is None:
            from .internet import Internet

            self._internet = Internet(self.prefix)
        return self._internet

    def set_eips(self, vpc_id: str, mapping: Mapping[str, str]) -> None:
        """The VPC's edge translates exactly ``mapping`` (EIP -> private IP)."""
        vns = self.vpc_ns(vpc_id)
        if not self._ns_exists(vns) or (not mapping and not self._ns_exists(self.internet.ns)):
            return
        self.internet.set_eips(vns, vpc_id, mapping)

    # --- teardown ------------------------------------------------------------------------

    def teardown(self, vpcs: Sequence[Vpc], instances: Sequence[Instance]) -> None:
        """Remove every namespace this region created (VPCs, and instance namespaces it
        made itself)."""
        for inst in instances:
            self.release_instance(inst)
        for vpc in vpcs:
            ns = self.vpc_ns(vpc.vpc_id)
            if self._ns_exists(ns):
                _run(["ip", "netns", "del", ns], check=False)
        self.internet.teardown()
