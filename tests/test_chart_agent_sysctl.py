"""The agent's sysctls under the chart's mounts: in a container /proc/sys is read-only, so
the chart mounts the host's /proc/sys/net at /host/proc/sys/net and sets ENIWAY_PROC_SYS.
Reproduced here in a private mount namespace (read-only /proc/sys, the same bind mount):
writes through the mount succeed and land in the network namespace the writing thread is in,
not in the host's. Needs root.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from chart_rbac import render

from localcluster import REPO

PROBE = r"""
import json, os, subprocess, sys
from pathlib import Path
root = Path(sys.argv[1]); netns = sys.argv[2]; value = sys.argv[3]
mount = root / "host/proc/sys/net"
mount.mkdir(parents=True)
run = lambda *a: subprocess.run(a, check=True, capture_output=True)
# The chart's hostPath mount (kubelet binds it from the host's read-write procfs), then
# what the runtime does to an unprivileged container's own /proc/sys.
run("mount", "--bind", "/proc/sys/net", str(mount))
run("mount", "--bind", "/proc/sys", "/proc/sys")
run("mount", "-o", "remount,bind,ro", "/proc/sys")
out = {}
try:
    open("/proc/sys/net/ipv4/ip_forward", "w").write("1")
    out["direct_write"] = "ok"
except OSError as e:
    out["direct_write"] = e.errno
os.environ["ENIWAY_PROC_SYS"] = str(root / "host/proc/sys")
from cni_plugin.agent import netns as ns
ns.write_sysctl(f"/run/netns/{netns}", "net/ipv4/conf/all/rp_filter", value)
out["in_netns"] = ns.read_sysctl(f"/run/netns/{netns}", "net/ipv4/conf/all/rp_filter")
out["host"] = ns.read_sysctl(None, "net/ipv4/conf/all/rp_filter")
print(json.dumps(out))
"""


def _agent_env_and_mounts() -> tuple[dict[str, Any], dict[str, str]]:
    docs = render(show_only=("templates/agent-daemonset.yaml",))
    pod = docs[0]["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    env = {e["name"]: e.get("value") for e in agent["env"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in agent["volumeMounts"]
              if m["name"] in volumes}
    return env, mounts


def test_sysctls_through_the_charts_mount_land_in_the_right_netns(root: None,
                                                                 tmp_path: Path) -> None:
    env, mounts = _agent_env_and_mounts()
    assert env["ENIWAY_PROC_SYS"] == "/host/proc/sys"
    assert mounts["/host/proc/sys/net"] == "/proc/sys/net"
    netns = f"chart-sysctl-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    host_before = Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip()
    value = "1" if host_before != "1" else "2"  # visible wherever it lands
    try:
        out = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", PROBE,
             str(tmp_path), netns, value], capture_output=True, text=True, timeout=60,
            cwd=REPO, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                           "PYTHONPATH": str(REPO)})
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    assert got["direct_write"] == 30  # EROFS: the container's /proc/sys
    assert got["in_netns"] == value
    assert got["host"] == host_before
    assert Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip() == host_before
