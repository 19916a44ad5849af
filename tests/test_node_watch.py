"""What the real agent receives from the API server: only its own node's ENIs, however
many other nodes there are and however often their ENIs change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import (
    NodeEnv,
    OtherNodes,
    make_node_env,
    teardown_node_env,
    wait_for,
    watch_counts,
)

from cni_plugin import contract
from localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]


@pytest.fixture
def env(cluster: LocalCluster, tmp_path: Path, root: None) -> Iterator[NodeEnv]:
    e = make_node_env(cluster, tmp_path)
    try:
        yield e
    finally:
        teardown_node_env(e)


def test_agent_receives_no_event_for_another_nodes_eni(cluster: LocalCluster,
                                                       env: NodeEnv) -> None:
    others = OtherNodes(cluster, 20).create()
    try:
        env.agent.stop()
        env.agent.start()  # lists with the other nodes' ENIs present
        start = watch_counts(env.agent)
        assert start["list/own"] == len(env.net.enis) and start["list/other"] == 0, start
        others.touch()
        others.touch()
        own = env.net.enis[1].id  # then one change of its own: after it, all is delivered
        code, _ = cluster.request(
            "PATCH", f"/apis/{contract.API_VERSION}/{contract.PLURAL_ENI}/{own}/status",
            {"status": {"ipCount": 999}}, content_type="application/merge-patch+json")
        assert code == 200
        end = wait_for(lambda: (c := watch_counts(env.agent))["watch/own"] > start["watch/own"]
                       and c, 30, "the agent sees its own ENI change")
        assert end["watch/other"] == 0, end  # 40 changes on other nodes, none delivered
        assert end["list/other"] == 0, end
        # and it still serves its own ENIs
        assert env.agent.status().get("enis"), env.agent.status()
    finally:
        others.delete()
