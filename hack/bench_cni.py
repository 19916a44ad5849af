#!/usr/bin/env python3
"""CNI benchmark: eniway vs Debian's ptp+host-local, in the same run (docs/testing.md, Benchmarks).

Builds one emulated node (real netns, ENIs into a VPC netns), starts a real local
control plane and an eniway-agent with a warm pool, then times, interleaved, CNI ADD
and DEL of the installed eniway binary and of ptp with host-local IPAM. Both run as
a runtime runs them (a fresh process per call, config on stdin) from inside the
node's network namespace. Prints medians, p99s and the eniway/peer ratios (a DEL both
until it answered and until the pod's eth0 is gone), the p99 of 50 concurrent ADDs, and
the peak RSS of the agent and of the shim.

    python3 hack/bench_cni.py [--iterations 40]      (root; make deps first)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "hack"), str(REPO / "tests"), str(REPO)]

from node_harness import NodeEnv, make_node_env, teardown_node_env  # noqa: E402

from cni_plugin.agent.netns import entered  # noqa: E402
from localcluster import LocalCluster  # noqa: E402

PEER_DIR = Path("/usr/lib/cni")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def timed(cmd: list[str], env: dict[str, str], stdin: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} {env['CNI_COMMAND']} failed: {p.stdout} {p.stderr}")
    return dt


def link_gone_after(t0: float, netns: str, ifname: str = "eth0", limit: float = 30.0) -> float:
    """Seconds from ``t0`` until ``ifname`` is gone from the netns (polled in-process)."""
    with entered(f"/run/netns/{netns}"):
        while True:
            try:
                socket.if_nametoindex(ifname)
            except OSError:
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > limit:
                raise RuntimeError(f"{ifname} still in {netns} {limit} s after DEL")
            time.sleep(0.0002)


def timed_del(cmd: list[str], env: dict[str, str], stdin: str, netns: str
              ) -> tuple[float, float]:
    """A DEL's time until it answered and until the pod's link is gone."""
    t0 = time.perf_counter()
    answered = timed(cmd, env, stdin)
    return answered, link_gone_after(t0, netns)


def cni_env(cmd: str, cid: str, netns: str, path: str, pod: str = "") -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid,
           "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_PATH": path}
    if pod:
        env["CNI_ARGS"] = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};"
                           f"K8S_POD_UID=uid-{pod}")
    return env


def row(name: str, xs: list[float]) -> str:
    return (f"  {name:<28} median {statistics.median(xs) * 1000:7.2f} ms   "
            f"p99 {pct(xs, 99) * 1000:7.2f} ms   (n={len(xs)})")


def bench(env: NodeEnv, iterations: int, workdir: Path) -> None:
    eniway_bin = str(env.shim.binary)
    eniway_conf = json.dumps(env.shim.conf("1.0.0"))
    ptp_conf = json.dumps({
        "cniVersion": "1.0.0", "name": "ptpbench", "type": "ptp", "ipMasq": False, "mtu": 1500,
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/16",
                 "dataDir": str(workdir / "host-local")}})
    node_ns = f"/run/netns/{env.net.node_ns}"
    res: dict[str, list[float]] = {k: [] for k in ("e_add", "e_del", "p_add", "p_del",
                                                   "e_gone", "p_gone")}
    # Warm-up: caches (.pyc, page cache, the agent's sockets) as on a busy node.
    # Each plugin gets a netns of its own, as in the measured runs: eniway's DEL answers
    # before the kernel has finished removing the pod's eth0; and each netns goes only
    # once its eth0 has (a loaded machine can take a while).
    for i in range(3):
        ns_e, ns_p = env.net.pod_netns(), env.net.pod_netns()
        with entered(node_ns):
            timed([eniway_bin], cni_env("ADD", f"w{i}", ns_e, "", f"w{i}"), eniway_conf)
            timed_del([eniway_bin], cni_env("DEL", f"w{i}", ns_e, "", f"w{i}"), eniway_conf,
                      ns_e)
            timed([str(PEER_DIR / "ptp")], cni_env("ADD", f"w{i}", ns_p, str(PEER_DIR)), ptp_conf)
            timed_del([str(PEER_DIR / "ptp")], cni_env("DEL", f"w{i}", ns_p, str(PEER_DIR)),
                      ptp_conf, ns_p)
        env.net.remove_pod_netns(ns_e)
        env.net.remove_pod_netns(ns_p)
    for i in range(iterations):
        a, b = env.net.pod_netns(), env.net.pod_netns()
        with entered(node_ns):
            order = [("e", a), ("p", b)] if i % 2 == 0 else [("p", b), ("e", a)]
            for kind, ns in order:
                if kind == "e":
                    res["e_add"].append(timed([eniway_bin], cni_env(
                        "ADD", f"b{i}", ns, "", f"bench-{i}"), eniway_conf))
                else:
                    res["p_add"].append(timed([str(PEER_DIR / "ptp")], cni_env(
                        "ADD", f"b{i}", ns, str(PEER_DIR)), ptp_conf))
            for kind, ns in order:
                if kind == "e":
                    answered, gone = timed_del([eniway_bin], cni_env(
                        "DEL", f"b{i}", ns, "", f"bench-{i}"), eniway_conf, ns)
                    res["e_del"].append(answered)
                    res["e_gone"].append(gone)
                else:
                    answered, gone = timed_del([str(PEER_DIR / "ptp")], cni_env(
                        "DEL", f"b{i}", ns, str(PEER_DIR)), ptp_conf, ns)
                    res["p_del"].append(answered)
                    res["p_gone"].append(gone)
        env.net.remove_pod_netns(a)
        env.net.remove_pod_netns(b)

    agent = {}  # time inside the agent for the sequential runs (warm-up included)
    for cmd in ("ADD", "DEL"):
        total = env.agent.metric("eniway_cni_request_duration_seconds_sum", f'"{cmd}"')
        count = env.agent.metric("eniway_cni_request_duration_seconds_count", f'"{cmd}"')
        agent[cmd] = total / count * 1000 if count else 0.0

    # 50 concurrent ADDs on one node.
    nss = [env.net.pod_netns() for _ in range(50)]
    with entered(node_ns), ThreadPoolExecutor(50) as ex:
        t0 = time.perf_counter()
        conc = list(ex.map(lambda k: timed([eniway_bin], cni_env(
            "ADD", f"c{k}", nss[k], "", f"conc-{k}"), eniway_conf), range(50)))
        wall = time.perf_counter() - t0
    records = list((Path(env.agent.state_dir) / "allocations").iterdir())
    distinct = len({p.name for p in records})
    with entered(node_ns), ThreadPoolExecutor(50) as ex:
        list(ex.map(lambda k: timed([eniway_bin], cni_env(
            "DEL", f"c{k}", nss[k], "", f"conc-{k}"), eniway_conf), range(50)))
    for ns in nss:
        env.net.remove_pod_netns(ns)

    # Shim peak RSS: one more ADD/DEL under GNU time.
    ns = env.net.pod_netns()
    rss = []
    for cmd in ("ADD", "DEL"):
        with entered(node_ns):
            p = subprocess.run(["/usr/bin/time", "-f", "%M", eniway_bin], input=eniway_conf,
                               env=cni_env(cmd, "rss", ns, "", "rss"), capture_output=True,
                               text=True)
        rss.append(int(p.stderr.strip().splitlines()[-1]))
    env.net.remove_pod_netns(ns)

    e_add, p_add = statistics.median(res["e_add"]), statistics.median(res["p_add"])
    e_del, p_del = statistics.median(res["e_del"]), statistics.median(res["p_del"])
    e_gone, p_gone = statistics.median(res["e_gone"]), statistics.median(res["p_gone"])
    print(f"\neniway CNI benchmark ({iterations} interleaved iterations, warm pool, "
          f"interpreter {os.path.realpath(sys.executable)})")
    print(row("eniway ADD", res["e_add"]))
    print(row("ptp+host-local ADD", res["p_add"]))
    print(row("eniway DEL", res["e_del"]))
    print(row("ptp+host-local DEL", res["p_del"]))
    print(row("eniway DEL, link gone", res["e_gone"]))
    print(row("ptp+host-local DEL, link gone", res["p_gone"]))
    print(f"  (sequential, inside the agent, mean: ADD {agent['ADD']:.2f} ms, "
          f"DEL {agent['DEL']:.2f} ms; the rest is the shim's process start and the socket "
          "round trip)")
    print(f"  ADD ratio (median)           {e_add / p_add:5.2f}x   (target <= 2.0x, aim 1.5x)")
    print(f"  DEL ratio (median)           {e_del / p_del:5.2f}x   (target <= 1.0x; answered)")
    print(f"  DEL-gone ratio (median)      {e_gone / p_gone:5.2f}x   (until the pod's eth0 "
          "is gone)")
    print(f"  50 concurrent ADDs           p99 {pct(conc, 99) * 1000:7.1f} ms   "
          f"median {statistics.median(conc) * 1000:6.1f} ms   wall {wall * 1000:6.1f} ms   "
          f"distinct IPs {distinct}/50   (target p99 < 1 s)")
    print(f"  agent peak RSS               {env.agent.rss_kb() / 1024:6.1f} MB   (target < 60)")
    print(f"  shim peak RSS                {max(rss) / 1024:6.1f} MB   (target < 15)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=40)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_cni.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if not (PEER_DIR / "ptp").exists() or not shutil.which("ip"):
        print("needs containernetworking-plugins and iproute2 (make deps)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="eniway-bench-"))
    cluster = LocalCluster().start()
    try:
        env = make_node_env(cluster, workdir, ips_per_eni=40,
                            agent_extra=["--gc-interval", "30", "--gc-grace", "300"])
        try:
            bench(env, args.iterations, workdir)
        finally:
            teardown_node_env(env)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
