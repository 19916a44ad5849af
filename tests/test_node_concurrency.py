"""Concurrency and crashes: 50 concurrent ADDs on one node; SIGKILL of the agent in the
middle of an ADD storm, then restart: no address held twice, none lost, every leftover
reclaimed by GC (docs/architecture.md, invariants 1, 3, 6)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from node_harness import CniResult, NodeEnv, make_node_env, teardown_node_env, wait_for

from cni_plugin import contract
from localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]


@pytest.fixture
def env(cluster: LocalCluster, tmp_path: Path) -> Iterator[NodeEnv]:
    e = make_node_env(cluster, tmp_path, ips_per_eni=30)
    try:
        yield e
    finally:
        teardown_node_env(e)


def records(env: NodeEnv) -> dict[str, str]:
    """ip -> containerId, from the store on disk."""
    import json
    adir = Path(env.agent.state_dir) / contract.STORE_ALLOC_DIR
    return {p.name: json.loads(p.read_text())["containerId"]
            for p in adir.iterdir() if not p.name.startswith(".")}


def test_50_concurrent_adds_get_50_distinct_addresses(env: NodeEnv) -> None:
    nss = [env.net.pod_netns() for _ in range(50)]
    with ThreadPoolExecutor(50) as ex:
        results = list(ex.map(lambda i: env.shim.add(f"cc-{i}", nss[i]), range(50)))
    assert all(r.rc == 0 for r in results), [r for r in results if r.rc]
    ips = [r.ip for r in results]
    assert len(set(ips)) == 50
    assert records(env) == {r.ip: f"cc-{i}" for i, r in enumerate(results)}
    assert len([a for a in env.pod_artifacts() if a.startswith("link")]) == 50
    # Every pod is wired: a few pings across both ENIs.
    for i in (0, 29, 30, 49):
        assert env.net.ping(nss[i], env.net.gateway)
    with ThreadPoolExecutor(50) as ex:
        dels = list(ex.map(lambda i: env.shim.delete(f"cc-{i}", nss[i]), range(50)))
    assert all(r.rc == 0 for r in dels)
    for ns in nss:
        env.net.remove_pod_netns(ns)
    wait_for(lambda: env.pod_artifacts() == [], 20, "all 50 torn down")
    assert env.agent.status()["counts"]["allocated"] == 0


def test_sigkill_during_add_storm_then_restart(env: NodeEnv) -> None:
    n = 40
    uids = [env.op.create_pod("default", f"storm-{i}") for i in range(n)]
    nss = [env.net.pod_netns() for _ in range(n)]
    results: dict[int, CniResult] = {}

    def add(i: int) -> None:
        results[i] = env.shim.add(f"st-{i}", nss[i], pod=("default", f"storm-{i}", uids[i]))

    with ThreadPoolExecutor(n) as ex:
        futures = [ex.submit(add, i) for i in range(n)]
        # Kill the agent once some allocations are on disk and others still in flight.
        wait_for(lambda: len(records(env)) >= 8, 30, "storm under way", interval=0.005)
        env.agent.stop(signal.SIGKILL)
        for f in futures:
            f.result(60)
    ok = {i: r.ip for i, r in results.items() if r.rc == 0}
    failed = [i for i, r in results.items() if r.rc != 0]
    assert failed, "the kill landed after the storm: nothing was interrupted"
    assert all(results[i].out["code"] == contract.ERR_TRY_AGAIN for i in failed), [
        results[i].out for i in failed]
    assert len(set(ok.values())) == len(ok)  # no address handed out twice

    env.agent.start()
    on_disk = records(env)
    # None lost: every ADD that succeeded is still recorded for its container.
    for i, ip in ok.items():
        assert on_disk.get(ip) == f"st-{i}", (i, ip, on_disk.get(ip))
    # The runtime gives up on failed sandboxes: their pods and netns go away.
    for i in failed:
        env.op.delete_pod("default", f"storm-{i}")
        env.net.remove_pod_netns(nss[i])
    wait_for(lambda: set(records(env)) == set(ok.values()), 30,
             f"GC reclaiming leftovers of {len(failed)} interrupted ADDs")
    links = [a for a in env.pod_artifacts() if a.startswith("link")]
    wait_for(lambda: len([a for a in env.pod_artifacts() if a.startswith("link")]) == len(ok),
             15, f"orphan links removed ({links})")
    counts = env.agent.status()["counts"]
    assert counts["allocated"] == len(ok)
    assert counts["free"] + counts["cooling"] + counts["allocated"] == counts["total"] == 60
    for i in list(ok)[:3]:
        assert env.net.ping(nss[i], env.net.gateway)
    # Survivors are still unique after new ADDs: the pool never re-hands their IPs.
    fresh = [env.net.pod_netns() for _ in range(5)]
    new = [env.shim.add(f"after-{k}", fresh[k]) for k in range(5)]
    assert all(r.rc == 0 for r in new)
    assert not {r.ip for r in new} & set(ok.values())
    for k, ns in enumerate(fresh):
        assert env.shim.delete(f"after-{k}", ns).rc == 0
    for i in ok:
        assert env.shim.delete(f"st-{i}", nss[i]).rc == 0
        env.op.delete_pod("default", f"storm-{i}")
    for ns in env.net.pods[:]:
        env.net.remove_pod_netns(ns)
    wait_for(lambda: env.pod_artifacts() == [], 20, "all clean")
