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


def test_demo_runs_end_to_end_and_cleans_up(root: None) -> None:
    before = _netns()
    p = subprocess.run([sys.executable, str(REPO / "hack" / "demo.py")], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    for section in ("Starting eniway on the embedded cloud emulator",
                    "Pod-to-pod traffic across nodes and ENIs",
                    "Scale to 30", "Scale back to 3", "Cleaning up"):
        assert f"=== {section}" in out, out[-4000:]
    assert out.count("$ kubectl get enis,enipools") == 3
    assert "$ kubectl get podips -A -o wide" in out
    pings = re.findall(r"ping node-\w/\S+ \(eni-\w+\) -> node-\w/\S+ \(eni-\w+\): (\w+)", out)
    assert len(pings) >= 8 and set(pings) == {"ok"}, pings
    # the last listing: every ENI attached, no released one still hanging on
    last = out.rsplit("$ kubectl get enis,enipools", 1)[1]
    phases = re.findall(r"^eni\.network\.eniway\.io/\S+\s+node-\w\s+(\w+)", last, re.M)
    assert phases and set(phases) == {"InUse"}, last[:2000]
    assert "everything stopped and removed" in out
    assert _netns() <= before, f"namespaces left behind: {_netns() - before}"
