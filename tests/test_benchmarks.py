"""The benchmarks in hack/ still run end to end, on a small scale, and print their figures.

No figure is judged here (speed is read from the full runs, never from a test); this
only keeps the scripts from rotting as the code under them changes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(script: str, *args: str, timeout: float = 600) -> str:
    p = subprocess.run([sys.executable, str(REPO / "hack" / script), *args], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.netns
@pytest.mark.cluster
def test_bench_cni_runs(root: None) -> None:
    out = run("bench_cni.py", "--iterations", "3")
    assert re.search(r"ADD ratio \(median\)\s+\d+\.\d+x", out), out
    assert re.search(r"DEL ratio \(median\)\s+\d+\.\d+x", out), out
    # a DEL's link is gone no sooner than the DEL answered
    for plugin in ("eniway", "ptp\\+host-local"):
        answered = re.search(rf"{plugin} DEL +median +(\d+\.\d+) ms", out)
        gone = re.search(rf"{plugin} DEL, link gone +median +(\d+\.\d+) ms", out)
        assert answered and gone, out
        assert float(gone.group(1)) >= float(answered.group(1)), out
    assert re.search(r"DEL-gone ratio \(median\)\s+\d+\.\d+x", out), out
    assert "distinct IPs 50/50" in out, out


@pytest.mark.netns
@pytest.mark.cluster
def test_bench_watch_runs(root: None) -> None:
    out = run("bench_watch.py", "--nodes", "5")
    assert re.search(r"one agent among 5 nodes: \d+ ENI events about other nodes for 4 "
                     r"changes there", out), out


@pytest.mark.netns
@pytest.mark.cluster
def test_bench_nodes_runs(root: None) -> None:
    out = run("bench_nodes.py", "--nodes", "1", "--pods", "3", timeout=900)
    assert re.search(r"ratio eniway/ptp\+host-local  p50 \d+\.\d+x  p99 \d+\.\d+x", out), out
    assert re.search(r"node start to Ready: median \d+\.\d s", out), out
    for daemon in ("kubelet", "containerd", "eniway-agent"):
        assert re.search(rf"RSS {daemon} +median \d+ MiB", out), out


@pytest.mark.cluster
def test_bench_operator_runs() -> None:
    out = run("bench_operator.py", "--nodes", "3", "--pods", "12", timeout=900)
    assert re.search(r"churn of 12 pods: \d+(\.\d+)? IP calls per 100 pods up", out), out
    assert re.search(r"warm 3 nodes: \d+(\.\d+)? s; ECS default rate limits", out), out
    assert re.search(r"apiserver requests per round \(churn\): \d+(\.\d+)?, of which", out), out


def test_bench_cloud_runs() -> None:
    out = run("bench_cloud.py", "-n", "3", "--in-process", "--json")
    assert "AssignPrivateIpAddresses" in out, out
