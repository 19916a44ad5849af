"""README's first command, as a new user runs it: the whole demo on the embedded cloud
emulator, end to end, leaving nothing behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.cluster, pytest.mark.netns]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _leftovers(cluster_id: str, workdir: str) -> set[str]:
    """What the demo's nodes could leave on the host: network namespaces, cgroups,
    mounts, processes (containerd, shims, containers, kubelet, agents)."""
    out = {f"netns {n}" for n in _netns() if n.startswith(f"{cluster_id}-")}
    out |= {f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/eniway-{cluster_id}-*")}
    out |= {f"mount {line.split()[4]}" for line in
            Path("/proc/self/mountinfo").read_text().splitlines() if workdir in line}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if workdir in cmd or f"{cluster_id}-" in cmd:
            out.add(f"process {proc.name} {cmd[:200]}")
    return out


def test_demo_runs_end_to_end_and_cleans_up(root: None) -> None:
    p = subprocess.run([sys.executable, str(REPO / "hack" / "demo.py")], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    for section in ("Starting eniway on the embedded cloud emulator",
                    "Pod-to-pod traffic across nodes and ENIs",
                    "hostPort 30080 through portmap", "Scale to 30", "Scale back to 3",
                    "Cleaning up"):
        assert f"=== {section}" in out, out[-4000:]
    assert out.count("$ kubectl get enis,enipools") == 3
    assert "$ kubectl get podips -A -o wide" in out
    pings = re.findall(r"ping node-\w/\S+ \(eni-\w+\) -> node-\w/\S+ \(eni-\w+\): (\w+)", out)
    assert len(pings) >= 8 and set(pings) == {"ok"}, pings
    # HTTP from inside busybox containers, answered by the server pod named in the line
    fetched = re.findall(r"^\[.*\] http node-\w/\S+ -> \S+:8080: (.*)$", out, re.M)
    assert len(fetched) == len(pings) and all(f.startswith("served by web-") for f in fetched), \
        fetched
    for client in ("node-b", "node-c"):  # the node itself and another node
        assert re.search(rf"http {client} \(host network\) -> \S+:30080 \(hostPort\): "
                         r"served by hostport$", out, re.M), out[-4000:]
    # the last listing: every ENI attached, no released one still hanging on
    last = out.rsplit("$ kubectl get enis,enipools", 1)[1]
    phases = re.findall(r"^eni\.network\.eniway\.io/\S+\s+node-\w\s+(?:true|false)\s+(\w+)",
                        last, re.M)
    assert phases and set(phases) == {"InUse"}, last[:2000]
    assert "everything stopped and removed" in out
    # other runs may share the machine: look only for what this run made
    m = re.search(r"cluster (\w+), working directory (\S+)", out)
    assert m, out[:2000]
    assert not _leftovers(m[1], m[2]), _leftovers(m[1], m[2])
