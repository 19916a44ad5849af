"""What a user sees of a node's pool: a full node stays Ready (LimitReached is its own
condition), Events show up in ``kubectl describe enipool``, and ``eniway-operator max-pods``
prints the figure the operator publishes. The operator against the real apiserver and the
emulator (official SDK)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from test_operator_e2e import Env, env  # noqa: F401 - the fixture

from eniway_operator.testing import make_pods, wait_for

pytestmark = pytest.mark.cluster


def _max_pods(*args: str, extra_env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eniway_operator.main", "max-pods", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(extra_env or {})})


def test_full_node_is_ready_and_says_why_on_its_enipool(env: Env) -> None:  # noqa: F811
    env.config(min_pool_size=1, max_pool_size=3)
    node = env.add_node("ecs.g6.large")  # 2 ENIs x 6 IPs: 5 pod IPs
    agent = env.start_agent()
    env.operator()
    make_pods(env.api, node, 5, namespace=env.namespace)
    wait_for(lambda: len(agent.held(node)) == 5, 90, "5 pods served")
    wait_for(lambda: env.condition(node, "LimitReached") == "True", 30, "LimitReached")
    assert env.condition(node, "Ready") == "True"  # full is not unhealthy
    described = env.cluster.kubectl("describe", "enipool", node).stdout
    events = described[described.index("Events:"):]
    assert "Normal  ENILimit" in events and "5 pod IPs" in events, described
    listed = env.cluster.kubectl("get", "enipool", node).stdout.splitlines()
    assert listed[0].split()[:2] == ["NAME", "READY"] and listed[1].split()[1] == "True"
    maxpods = (env.pool(node) or {})["status"]["limits"]["maxPods"]
    out = _max_pods("-q", "ecs.g6.large")
    assert out.returncode == 0 and out.stdout.strip() == str(maxpods) == "5", out.stderr


def test_max_pods_from_the_table_and_from_the_cloud(cloudsim: Any) -> None:
    out = _max_pods("ecs.g6.large", "ecs.g6.4xlarge", "ecs.nosuch")
    assert out.returncode == 2, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "ENIS", "IPS/ENI", "MAXPODS", "SOURCE"]
    assert lines[1].split()[:4] == ["ecs.g6.large", "2", "6", "5"]
    assert lines[2].split()[:4] == ["ecs.g6.4xlarge", "8", "20", "133"]
    assert "unknown instance type" in lines[3]
    cloud = _max_pods("ecs.g6.4xlarge", "--from-cloud", "--cloud=cloudsim",
                      f"--cloud-endpoint={cloudsim.endpoint}", f"--region={cloudsim.region}",
                      "--cluster-id=x",
                      extra_env={"ALIBABA_CLOUD_ACCESS_KEY_ID": cloudsim.access_key_id,
                                 "ALIBABA_CLOUD_ACCESS_KEY_SECRET": cloudsim.access_key_secret})
    assert cloud.returncode == 0, cloud.stderr
    assert cloud.stdout.splitlines()[1].split() == ["ecs.g6.4xlarge", "8", "20", "133", "api"]
    assert _max_pods("-q", "ecs.nosuch").returncode == 2
