"""``eniway-agent debug``: ask the running agent on this node for its state, over its unix
socket, and print it as tables (or ``-o json``). From outside the node:

    kubectl -n kube-system exec ds/eniway-agent -c agent -- eniway-agent debug
    kubectl -n kube-system exec POD -c agent -- eniway-agent debug -o json

(``ds/...`` picks one pod of the DaemonSet; name the pod on the node you look at.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from cni_plugin import contract
from cni_plugin.shim import call_agent

SOCKET_ENV = "ENIWAY_AGENT_SOCKET"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eniway-agent debug", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or contract.DEFAULT_SOCKET,
                   help=f"the agent's socket (default ${SOCKET_ENV}, else "
                        f"{contract.DEFAULT_SOCKET})")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table",
                   help="table for people, json for tools (default %(default)s)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for the agent's answer (default %(default)s)")
    return p


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _ips(ips: list[str]) -> str:
    return ", ".join(ips) if ips else "-"


def render(s: dict[str, Any]) -> str:
    """The snapshot as sections of tables."""
    c = s.get("counts") or {}
    out = [f"node {s.get('node')}   agent {s.get('version')}   ready {s.get('ready')} "
           f"(ENIs synced {s.get('enisSynced')}, release list synced {s.get('poolSynced')})   "
           f"cooldown {s.get('cooldown')}s",
           f"IPs: {c.get('total', 0)} total, {c.get('free', 0)} free, {c.get('cooling', 0)} "
           f"cooling, {c.get('allocated', 0)} allocated, {c.get('releasing', 0)} releasing",
           "", "ENIs"]
    enis = s.get("enis") or []
    out.append(_table(["ENI", "LINK", "TABLE", "MTU", "GATEWAY", "IPS"],
                      [[e["id"], f"{e['ifname']} ({e['index']})", e["table"], e["mtu"],
                        e["gateway"], len(e["ips"])] for e in enis]) if enis else "  (none)")
    for e in enis:
        out += ["", f"table {e['table']} ({e['id']}, {e['ifname']})"]
        out += [f"  route  {r}" for r in e.get("routes") or []] or ["  route  (none)"]
        out += [f"  rule   {r}" for r in e.get("rules") or []]
        if e.get("error"):
            out.append(f"  error  {e['error']}")
    out += ["", "Allocations"]
    allocs = s.get("allocations") or []
    out.append(_table(["IP", "POD", "CONTAINER", "IF", "ENI", "VETH", "SINCE"],
                      [[a["ip"], a["pod"] or "-", a["container"], a["ifname"], a["eni"],
                        a["veth"], a["since"]] for a in allocs]) if allocs else "  (none)")
    out += ["", f"Free ({len(s.get('free') or [])}): {_ips(s.get('free') or [])}"]
    cooling = s.get("cooling") or []
    out.append(f"Cooling ({len(cooling)}): " + (", ".join(
        f"{x['ip']} ({x['remaining']}s left)" for x in cooling) if cooling else "-"))
    rel = s.get("release") or {}
    out += ["", f"Pending releases (token {rel.get('token') or '-'})",
            f"  requested by the operator: {_ips(rel.get('requested') or [])}",
            f"  acknowledged (no pod holds them): {_ips(rel.get('acknowledged') or [])}",
            f"  held by pods (not acknowledged): {_ips(rel.get('held') or [])}",
            "", "Last errors"]
    errors = s.get("errors") or []
    out.append(_table(["TIME", "SOURCE", "MESSAGE"],
                      [[x["time"], x["source"], x["message"]] for x in errors])
               if errors else "  (none)")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        answer = call_agent(args.socket, {"command": contract.WIRE_DEBUG}, args.timeout)
    except (OSError, ValueError) as e:
        print(f"eniway-agent debug: no eniway-agent answers on {args.socket} "
              f"({type(e).__name__}: {e}).\nIs the agent running on this node? "
              "kubectl -n kube-system get pods -l app.kubernetes.io/component=agent -o wide "
              "(the release's namespace), then its log.", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"eniway-agent debug: the agent refused: code {answer.get('code')}: "
              f"{answer.get('msg')}", file=sys.stderr)
        return 1
    snap = answer.get("result") or {}
    print(json.dumps(snap, indent=2) if args.output == "json" else render(snap))
    return 0
