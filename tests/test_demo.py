"""README's first command, as a new user runs it: the whole demo on the embedded cloud
emulator, end to end, leaving nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import boxreaper
from eniway_operator.testing import wait_for

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


class Demo:
    """``hack/demo.py`` as a user runs it, its output read as it comes."""

    def __init__(self, *args: str) -> None:
        # As `make demo` runs it: the venv's interpreter, the venv not on PATH.
        venv_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                               if p != venv_bin)
        self.proc = subprocess.Popen([sys.executable, str(REPO / "hack" / "demo.py"), *args],
                                     cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PATH": path})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_line(self, start: str, timeout: float) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"demo exited {self.proc.returncode}:\n{self.out[-4000:]}")
            return any(line.startswith(start) for line in self.lines)
        wait_for(seen, timeout, f"demo line {start!r}", interval=0.5,
                 detail=lambda: self.out[-3000:])

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(30)
        return code

    def ids(self) -> tuple[str, str]:
        m = re.search(r"cluster (\w+), working directory (\S+)", self.out)
        assert m, self.out[:2000]
        return m[1], m[2]


def test_demo_runs_end_to_end_and_cleans_up(root: None) -> None:
    """With ``--keep``, stopped by SIGTERM as a service manager would: the clean-up runs."""
    demo = Demo("--keep")
    try:
        demo.wait_line("kubeconfig: ", 900)
        demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait(300)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    out = demo.out
    assert code == 0, out[-4000:]
    assert "stop requested" in out, out[-2000:]
    for section in ("Starting eniway on the embedded cloud emulator",
                    "Pod-to-pod traffic across nodes and ENIs",
                    "hostPort 30080 through portmap",
                    "A public IP (EIP, NAT mode) for a pod, reached from the internet",
                    "Scale to 30", "Scale back to 3",
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
    assert re.search(r"http internet \(\S+-internet\) -> \S+:8080 \(EIP\): served by public, ",
                     out), out[-4000:]
    assert re.search(r"pod deleted: EIP \S+ disassociated and released", out), out[-4000:]
    for client in ("node-b", "node-c"):  # the node itself and another node
        assert re.search(rf"http {client} \(host network\) -> \S+:30080 \(hostPort\): "
                         r"served by hostport$", out, re.M), out[-4000:]
    # the last listing: every ENI attached, no released one still hanging on
    last = out.rsplit("$ kubectl get enis,enipools", 1)[1]
    phases = re.findall(r"^eni\.network\.eniway\.io/\S+\s+node-\w\s+(?:true|false)\s+"
                        r"(?:Shared|Exclusive)\s+(\w+)", last, re.M)
    assert phases and set(phases) == {"InUse"}, last[:2000]
    assert "everything stopped and removed" in out
    # other runs may share the machine: look only for what this run made
    cluster_id, workdir = demo.ids()
    assert not _leftovers(cluster_id, workdir), _leftovers(cluster_id, workdir)
    assert not (boxreaper.CLAIMS / f"{cluster_id}.json").exists()


def test_demo_killed_is_reaped_by_the_next_run(root: None) -> None:
    """SIGKILL leaves the run's nodes behind; the next run's first step (boxreaper)
    removes them, and nothing of a run that is still alive."""
    # A live run's claim, with a namespace of its own: never touched.
    live_id = f"boxlive{os.getpid()}"
    subprocess.run(["ip", "netns", "add", f"{live_id}-n"], check=True)
    live_claim = boxreaper.claim(live_id, Path("/tmp/eniway-box-live-" + live_id))
    demo = Demo("--up")
    try:
        demo.wait_line("kubeconfig: ", 600)
        cluster_id, workdir = demo.ids()
        demo.proc.kill()  # SIGKILL: no clean-up
        demo.wait(60)
        left = wait_for(lambda: _leftovers(cluster_id, workdir), 30, "leftovers")
        assert any(x.startswith("netns ") for x in left), left
        assert (boxreaper.CLAIMS / f"{cluster_id}.json").exists()

        reaper = subprocess.run([sys.executable, str(REPO / "hack" / "boxreaper.py")],
                                capture_output=True, text=True, timeout=300)
        assert reaper.returncode == 0, reaper.stderr
        assert f"reaped box {cluster_id}" in reaper.stdout, reaper.stdout
        wait_for(lambda: not _leftovers(cluster_id, workdir), 60,
                 f"nothing left of {cluster_id}: {_leftovers(cluster_id, workdir)}")
        assert not Path(workdir).exists()
        assert f"{live_id}-n" in _netns() and live_claim.exists()
        assert live_id not in reaper.stdout
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
        boxreaper.release(live_id)
        subprocess.run(["ip", "netns", "del", f"{live_id}-n"], capture_output=True)
        boxreaper.reap(print)
