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
@pytest.mark.parametrize(("cloud", "limits"), [("aliyun", "ECS"), ("aws", "EC2")])
def test_bench_operator_runs(cloud: str, limits: str) -> None:
    out = run("bench_operator.py", "--nodes", "3", "--pods", "12", "--cloud", cloud,
              timeout=900)
    assert re.search(r"churn of 12 pods: \d+(\.\d+)? IP calls per 100 pods up", out), out
    assert re.search(rf"warm 3 nodes: \d+(\.\d+)? s; {limits} default rate limits", out), out
    assert re.search(r"apiserver requests per round \(churn\): \d+(\.\d+)?, of which", out), out


def test_bench_cloud_runs() -> None:
    out = run("bench_cloud.py", "-n", "3", "--in-process", "--json")
    assert "AssignPrivateIpAddresses" in out, out


def test_bench_tradeoff_runs(tmp_path: Path) -> None:
    png, md = tmp_path / "tradeoff.png", tmp_path / "tradeoff.md"
    out = run("bench_tradeoff.py", "--nodes", "1", "--burst", "6", "--time-scale", "0.2",
              "--policies", "eniway defaults,Terway min 0 / max 5", "--plot", str(png),
              "--table", str(md))
    # 1 node, bursts of 6 then 3, each pod replaced once, a new node with 6: 24 pods
    rows = re.findall(r"^(.+?) \((eniway|modelled)\): (\d+) pods, p50 (\d+\.\d+) s, p99 "
                      r"(\d+\.\d+) s, idle IPs/node avg (\d+\.\d+) peak (\d+), (\d+) cloud "
                      r"calls, (\d+) throttled", out, re.M)
    assert [r[:2] for r in rows] == [("eniway defaults", "eniway"),
                                     ("Terway min 0 / max 5", "modelled")], out
    for _, _, pods, p50, p99, idle, peak, calls, _ in rows:
        assert int(pods) == 24, out
        assert 0 <= float(p50) <= float(p99) < 60, out
        assert float(p99) > 0.5, out  # the cold burst waits for an attach (1 to 3 s)
        assert float(idle) <= int(peak) <= 133, out  # 7 ENIs x 19 IPs at most
        assert int(calls) >= 3, out  # at least create, attach and a describe
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| eniway defaults | eniway | 24 |" in md.read_text()
    # the verdicts on eniway's defaults are computed and printed, in the table file too
    for scope in ("against the modelled peers", "against every policy run"):
        verdict = re.search(rf"^eniway defaults {scope}: (on the frontier; beats .+|NOT on "
                            r"the frontier; beaten by .+)$", out, re.M)
        assert verdict, out
        assert verdict.group(0) in md.read_text()


def test_tradeoff_frontier_verdict() -> None:
    """The verdict follows the definition: beaten means another policy is no worse on both
    idle IPs and p99 and better on one; ties on both beat nobody."""
    sys.path.insert(0, str(REPO / "hack"))
    import bench_tradeoff as bt

    def row(name: str, idle: float, p99: float, label: str = "modelled") -> dict[str, object]:
        return {"policy": name, "idle_avg": idle, "p99_s": p99, "label": label}

    every, peers = "eniway defaults against every policy run", \
        "eniway defaults against the modelled peers"
    rows = [row("eniway defaults", 5.0, 4.0, "eniway"), row("a", 6.0, 4.0), row("b", 5.0, 3.0),
            row("c", 9.0, 9.0)]
    assert bt.frontier(rows) == {"b"}
    assert bt.verdict(rows) == f"{every}: NOT on the frontier; beaten by b"
    rows[2] = row("b", 4.0, 5.0)  # fewer idle IPs but a higher p99: a trade, not a win
    assert bt.frontier(rows) == {"eniway defaults", "b"}
    assert bt.verdict(rows) == f"{every}: on the frontier; beats a, c (2 of 3)"
    assert bt.verdict([row("eniway defaults", 5.0, 4.0), row("twin", 5.0, 4.0)]) == (
        f"{every}: on the frontier; beats none (0 of 1)")
    # another setting of eniway's own counts against every policy, not against the peers
    rows.append(row("eniway max 0", 4.0, 4.0, "eniway"))
    assert bt.verdicts(rows).splitlines() == [
        f"{peers}: on the frontier; beats a, c (2 of 3)",
        f"{every}: NOT on the frontier; beaten by eniway max 0"]
