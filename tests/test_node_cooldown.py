"""A node's ``ip_cooldown`` (global, or overridden for that node) reaches its agent: the
operator puts the configuration in effect in the ENIPool's ``status.config``, and the
agent rests a released IP exactly that long, so neither side hands out or releases an
IP the other still counts as cooling. Real agent, real API server, real netns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from node_harness import NodeEnv, make_node_env, teardown_node_env, wait_for

from localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]


@pytest.fixture
def env(cluster: LocalCluster, tmp_path: object) -> Iterator[NodeEnv]:
    e = make_node_env(cluster, tmp_path, ips_per_eni=2)  # type: ignore[arg-type]
    try:
        yield e
    finally:
        teardown_node_env(e)


def set_cooldown(env: NodeEnv, value: object) -> None:
    env.op._req("PATCH", f"{env.op.base}/enipools/{env.op.node}/status",
                {"status": {"config": {"ip_cooldown": value}}},
                ctype="application/merge-patch+json")


def add_and_delete(env: NodeEnv, name: str) -> str:
    netns = env.net.pod_netns()
    pod = ("default", name, env.op.create_pod("default", name))
    added = env.shim.add(f"cid-{name}", netns, pod=pod)
    assert added.rc == 0, (added, env.agent.tail())
    assert env.shim.delete(f"cid-{name}", netns, pod=pod).rc == 0
    # DEL answers once the pod is cut off; the IP comes back when its veth is gone.
    wait_for(lambda: env.agent.status()["counts"]["allocated"] == 0, 10, "IP given back")
    env.net.remove_pod_netns(netns)
    env.op.delete_pod("default", name)
    return added.ip


def test_the_nodes_ip_cooldown_reaches_the_agent(env: NodeEnv) -> None:
    assert env.agent.status()["cooldown"] == 0  # the harness's --cooldown 0
    set_cooldown(env, 3600)
    wait_for(lambda: env.agent.status()["cooldown"] == 3600, 10, "cooldown from status.config")
    first = add_and_delete(env, "cool-a")
    counts = env.agent.status()["counts"]
    assert counts["cooling"] == 1 and counts["free"] == 3, counts
    second = add_and_delete(env, "cool-b")
    assert second != first  # the rested IP is not handed out while others are free

    set_cooldown(env, 0)  # the override goes: IPs rest no more, the cooling ones are free
    wait_for(lambda: env.agent.status()["counts"]["cooling"] == 0, 10, "cooling IPs freed")
    for gone in (None, "junk"):  # none written, or not a number: the flag's value again
        set_cooldown(env, 120)
        wait_for(lambda: env.agent.status()["cooldown"] == 120, 10, "cooldown 120")
        set_cooldown(env, gone)
        wait_for(lambda: env.agent.status()["cooldown"] == 0, 10, f"{gone!r}: --cooldown")
