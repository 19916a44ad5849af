"""Leftovers of cluster boxes killed without their clean-up (SIGKILL, power cut).

Each running box leaves a claim, ``/run/eniway-box/<cluster id>.json``, naming its
process (pid and start time), its cluster id and its working directory; a clean stop
removes it. A claim whose process is gone (or whose pid now belongs to another process)
proves what it names is dead and this box's own: its processes (containers, shims,
anything still running from its directory or named after its cluster), cgroups, network
namespaces, mounts and directory are removed. Claims of live boxes (other runs sharing
the machine) are never touched, nor anything without a claim.

    python3 hack/boxreaper.py          # what the next box start does first
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CLAIMS = Path("/run/eniway-box")
CGROUPS = Path("/sys/fs/cgroup")


def _start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (clock ticks since boot): a pid and this name a process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def claim(cluster_id: str, workdir: Path) -> Path:
    """Record this process as the owner of ``cluster_id``'s objects."""
    CLAIMS.mkdir(parents=True, exist_ok=True)
    path = CLAIMS / f"{cluster_id}.json"
    pid = os.getpid()
    path.write_text(json.dumps({"pid": pid, "start": _start_time(pid),
                                "cluster_id": cluster_id, "workdir": str(workdir)}))
    return path


def release(cluster_id: str) -> None:
    (CLAIMS / f"{cluster_id}.json").unlink(missing_ok=True)


def _alive(owner: dict[str, object]) -> bool:
    pid = int(str(owner.get("pid") or 0))
    return pid > 0 and _start_time(pid) == owner.get("start")


def _processes(cluster_id: str, workdir: str) -> set[int]:
    pids: set[int] = set()
    for procs in CGROUPS.glob(f"*/eniway-{cluster_id}-*/**/cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in procs.read_text().split()}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if workdir in cmd or f"{cluster_id}-" in cmd:
            pids.add(int(proc.name))
    pids.discard(os.getpid())
    return pids


def _remove_cgroups(cluster_id: str) -> None:
    for top in CGROUPS.glob(f"*/eniway-{cluster_id}-*"):
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                      reverse=True)
        for d in [*dirs, top]:
            with contextlib.suppress(OSError):
                d.rmdir()


def reap_one(owner: dict[str, object]) -> list[str]:
    """Remove what a dead box left; what was removed, one line each."""
    cluster_id, workdir = str(owner["cluster_id"]), str(owner["workdir"])
    done: list[str] = []
    deadline = time.monotonic() + 15
    while (pids := _processes(cluster_id, workdir)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                done.append(f"process {pid}")
        time.sleep(0.1)
    _remove_cgroups(cluster_id)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            timeout=30).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(f"{cluster_id}-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            done.append(f"netns {name}")
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if line.split()[4].startswith(workdir)]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True, timeout=30)
        done.append(f"mount {m}")
    if workdir.startswith("/tmp/eniway-box-") and Path(workdir).exists():
        shutil.rmtree(workdir, ignore_errors=True)
        done.append(f"directory {workdir}")
    release(cluster_id)
    return done


def reap(log: Callable[[str], None] = print) -> int:
    """Reap every dead box's leftovers; the number of boxes reaped."""
    n = 0
    for path in sorted(CLAIMS.glob("*.json")) if CLAIMS.exists() else ():
        try:
            owner = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        removed = reap_one(owner)
        n += 1
        log(f"reaped box {owner['cluster_id']} (its process {owner['pid']} is gone): "
            f"{len(removed)} leftovers" + (f" ({', '.join(removed[:8])}...)" if removed else ""))
    return n


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("needs root (network namespaces, cgroups)", file=sys.stderr)
        sys.exit(1)
    reap()
    sys.exit(0)
