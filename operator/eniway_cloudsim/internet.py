"""Network mode's internet (root): one namespace standing for the public internet, and
the VPC edge that translates EIPs in NAT mode.

The internet namespace holds a bridge with the client address (``CLIENT_IP``, TEST-NET-3)
and, per VPC, a veth whose other end is ``inet0`` in the VPC namespace (the VPC's edge,
on a transit address of the same /24). In the VPC namespace an nftables table does what
the VPC's NAT does for an EIP associated with a private IP:

- prerouting: a packet to the EIP is sent on to the private IP (DNAT), so a client on
  the internet reaches the pod at its EIP and the pod sees the client's address;
- postrouting: a packet from the private IP leaving for the internet gets the EIP as its
  source (SNAT); replies are translated back by conntrack;
- forward: anything else leaving for the internet (a private address without an EIP) is
  dropped, as the VPC has no public address for it.

The internet namespace routes each EIP to its VPC's edge. The source/destination check
of netmode.py lets packets from ``inet0`` through: their sources are public.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

from .netmode import NFT_TABLE, _run

CLIENT_NET = "203.0.113.0/24"
CLIENT_IP = "203.0.113.1"
EDGE_LINK = "inet0"  # in each VPC namespace
NAT_TABLE = "csimeip"
NAT_RULESET = f"""
table ip {NAT_TABLE} {{
  map e2p {{ type ipv4_addr : ipv4_addr; }}
  map p2e {{ type ipv4_addr : ipv4_addr; }}
  set nated {{ type ipv4_addr; }}
  chain pre {{ type nat hook prerouting priority -100; policy accept;
    dnat ip to ip daddr map @e2p;
  }}
  chain post {{ type nat hook postrouting priority 100; policy accept;
    oifname "{EDGE_LINK}" snat ip to ip saddr map @p2e;
  }}
  chain egress {{ type filter hook forward priority 0; policy accept;
    oifname "{EDGE_LINK}" ip saddr != @nated drop;
  }}
}}
"""


def _ns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


def _link_exists(ns: str, name: str) -> bool:
    return _run(["ip", "-n", ns, "-o", "link", "show", "dev", name], check=False) != ""


class Internet:
    """The internet namespace and the VPC edges. ``prefix`` as NetMode's."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ns = prefix + "internet"
        self.bridge = "inet"

    def edge_address(self, vpc_id: str, taken: Sequence[str] = ()) -> str:
        """The VPC edge's transit address: stable per VPC, unique among ``taken`` (the
        edges already plugged in)."""
        n = int(hashlib.sha1(vpc_id.encode()).hexdigest(), 16)
        for i in range(250):
            ip = f"203.0.113.{2 + (n + i) % 250}"
            if ip not in taken:
                return ip
        raise RuntimeError("no transit address left for another VPC")

    def _edges(self) -> list[str]:
        """Edge addresses in use: the gateways of the EIP routes, and whatever the
        internet namespace has heard from."""
        out = _run(["ip", "-n", self.ns, "-4", "-o", "neigh", "show", "dev", self.bridge],
                   check=False)
        routes = _run(["ip", "-n", self.ns, "-4", "route", "show"], check=False)
        taken = [line.split()[0] for line in out.splitlines() if line.strip()]
        taken += [w[i + 1] for w in (r.split() for r in routes.splitlines())
                  for i, x in enumerate(w[:-1]) if x == "via"]
        return taken

    def _peer(self, vpc_id: str) -> str:
        return "x" + hashlib.sha1(vpc_id.encode()).hexdigest()[:12]

    def ensure(self) -> None:
        if not _ns_exists(self.ns):
            _run(["ip", "netns", "add", self.ns])
            _run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
            _run(["ip", "netns", "exec", self.ns, "sysctl", "-q", "-w",
                  "net.ipv4.ip_forward=1"])
        if not _link_exists(self.ns, self.bridge):
            _run(["ip", "-n", self.ns, "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "-n", self.ns, "addr", "add", f"{CLIENT_IP}/24", "dev", self.bridge])
            _run(["ip", "-n", self.ns, "link", "set", self.bridge, "up"])

    def ensure_edge(self, vns: str, vpc_id: str) -> str:
        """Plug the VPC namespace ``vns`` into the internet; returns its edge address."""
        self.ensure()
        peer = self._peer(vpc_id)
        addrs = _run(["ip", "-n", vns, "-4", "-o", "addr", "show", "dev", EDGE_LINK],
                     check=False)
        if addrs.strip():
            self._pass_edge(vns)
            return str(addrs.split()[3].split("/")[0])
        edge = self.edge_address(vpc_id, self._edges())
        if _link_exists(self.ns, peer):
            _run(["ip", "-n", self.ns, "link", "del", peer], check=False)
        _run(["ip", "link", "add", EDGE_LINK, "netns", vns, "type", "veth", "peer", "name",
              peer, "netns", self.ns])
        _run(["ip", "-n", self.ns, "link", "set", peer, "master", self.bridge, "up"])
        _run(["ip", "-n", vns, "addr", "add", f"{edge}/24", "dev", EDGE_LINK])
        _run(["ip", "-n", vns, "link", "set", EDGE_LINK, "up"])
        _run(["ip", "-n", vns, "route", "replace", "default", "via", CLIENT_IP, "dev",
              EDGE_LINK])
        self._pass_edge(vns)
        return edge

    @staticmethod
    def _pass_edge(vns: str) -> None:
        """Packets from the internet carry public sources: the ENI source check lets
        those from the edge through."""
        chain = _run(["ip", "netns", "exec", vns, "nft", "list", "chain", "ip", NFT_TABLE,
                      "sdcheck"], check=False)
        if chain and f'"{EDGE_LINK}"' not in chain:
            _run(["ip", "netns", "exec", vns, "nft", "insert", "rule", "ip", NFT_TABLE,
                  "sdcheck", "iifname", f'"{EDGE_LINK}"', "accept"])

    def set_eips(self, vns: str, vpc_id: str, mapping: Mapping[str, str]) -> None:
        """Make the VPC edge translate exactly ``mapping`` (EIP -> private IP)."""
        edge = self.ensure_edge(vns, vpc_id)
        has = _run(["ip", "netns", "exec", vns, "nft", "list", "table", "ip", NAT_TABLE],
                   check=False)
        cmds = [] if has else [NAT_RULESET]
        cmds += [f"flush map ip {NAT_TABLE} e2p", f"flush map ip {NAT_TABLE} p2e",
                 f"flush set ip {NAT_TABLE} nated"]
        if mapping:
            e2p = ", ".join(f"{e} : {p}" for e, p in sorted(mapping.items()))
            p2e = ", ".join(f"{p} : {e}" for e, p in sorted(mapping.items()))
            nated = ", ".join(sorted(mapping.values()))
            cmds += [f"add element ip {NAT_TABLE} e2p {{ {e2p} }}",
                     f"add element ip {NAT_TABLE} p2e {{ {p2e} }}",
                     f"add element ip {NAT_TABLE} nated {{ {nated} }}"]
        _run(["ip", "netns", "exec", vns, "nft", "-f", "-"], "\n".join(cmds) + "\n")
        routes = _run(["ip", "-n", self.ns, "-4", "route", "show", "via", edge], check=False)
        current = {line.split()[0] for line in routes.splitlines() if line.strip()}
        want = set(mapping)
        lines = [f"route replace {ip}/32 via {edge}" for ip in sorted(want - current)]
        lines += [f"route del {ip}/32 via {edge}" for ip in sorted(current - want)]
        if lines:
            _run(["ip", "-n", self.ns, "-force", "-batch", "-"], "\n".join(lines) + "\n",
                 check=False)

    def teardown(self) -> None:
        if _ns_exists(self.ns):
            _run(["ip", "netns", "del", self.ns], check=False)
