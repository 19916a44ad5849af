"""What ``eniway-agent debug`` shows: the running agent's view of its node, read under
its lock (pool, allocations, ENIs with their route tables and rules, the release
request, the last errors). Served on the CNI socket as the ``DEBUG`` request."""

from __future__ import annotations

from typing import Any

from cni_plugin.agent.core import NodeAgent, version


def snapshot(agent: NodeAgent) -> dict[str, Any]:
    """The node's state for a human (or ``-o json``); netlink reads happen outside the lock."""
    with agent.lock:
        pool = agent.pool
        counts = pool.counts()
        now = pool.clock()
        cooling: list[dict[str, Any]] = [
            {"ip": ip, "remaining": round(max(0.0, pool.cooldown - (now - pool.cooling[ip])), 1)}
            for ip in sorted(pool.cooling, key=_ipkey)]
        free = sorted((ip for ip in pool.owner if ip not in pool.allocated
                       and ip not in pool.release and ip not in pool.cooling), key=_ipkey)
        allocations = [{"ip": r.ip, "eni": r.eniId, "pod": f"{r.podNamespace}/{r.podName}"
                        if r.podName else "", "container": r.containerId[:12],
                        "ifname": r.ifname, "veth": r.veth, "since": r.allocatedAt}
                       for r in sorted(agent.records.values(), key=lambda r: _ipkey(r.ip))]
        enis: list[dict[str, Any]] = [{"id": e.id, "ifname": e.link.ifname, "index": e.link.index,
                 "table": e.link.table, "mtu": e.link.mtu, "gateway": e.gateway,
                 "ips": sorted(e.ips, key=_ipkey)}
                for e in sorted(agent.enis.values(), key=lambda e: e.id)]
        release = {"token": agent.release_token, "requested": sorted(pool.release, key=_ipkey),
                   "acknowledged": pool.acknowledged(),
                   "held": sorted((ip for ip in pool.release if ip in pool.allocated),
                                  key=_ipkey)}
        head = {"node": agent.cfg.node_name, "ready": agent.ready,
                "enisSynced": agent.enis_synced, "poolSynced": agent.pool_synced,
                "cooldown": pool.cooldown}
    for eni in enis:
        try:
            eni.update(agent.datapath.describe_table(int(eni["table"])))
        except Exception as e:  # netlink errors of every kind: shown, not raised
            eni.update({"routes": [], "rules": [], "error": f"{type(e).__name__}: {e}"})
    return {**head, "version": version(), "counts": counts, "enis": enis, "free": free,
            "cooling": cooling, "allocations": allocations, "release": release,
            "errors": agent.errors.list()}


def _ipkey(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split("."))
