"""Real runtime clients calling the installed CNI binary: libcni (our Go harness over
Debian's golang-github-appc-cni-dev) with eniway first in a chain of Debian's tuning,
bandwidth and portmap; and podman with its CNI backend running a busybox container."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_harness import REPO, NodeEnv, make_node_env, sh, teardown_node_env, wait_for

from cni_plugin import contract
from localcluster import CACHE, LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

HARNESS_SRC = REPO / "hack" / "libcni-harness" / "main.go"
GOPATH = "/usr/share/gocode"


def build_harness() -> Path:
    """Build the Go harness once per source version (GOPATH mode, offline)."""
    if not shutil.which("go") or not Path(GOPATH, "src/github.com/containernetworking/cni/libcni"
                                          ).is_dir():
        pytest.fail("go and golang-github-appc-cni-dev are required (make deps)")
    digest = hashlib.sha256(HARNESS_SRC.read_bytes()).hexdigest()[:12]
    out = CACHE / "libcni-harness" / digest / "libcni-harness"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "CGO_ENABLED": "0",
               "GOFLAGS": "", "GOCACHE": str(CACHE / "go-build")}
        p = subprocess.run(["go", "build", "-o", str(out) + ".tmp", "./hack/libcni-harness"],
                           env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert p.returncode == 0, f"building the libcni harness failed:\n{p.stderr}"
        os.replace(str(out) + ".tmp", out)
    return out


@pytest.fixture(scope="module")
def env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeEnv]:
    # Runtimes outside Kubernetes (podman) name pods that do not exist in the API: a
    # longer grace keeps GC off them while a test runs.
    e = make_node_env(cluster, tmp_path_factory.mktemp("rt"), ips_per_eni=3,
                      agent_extra=["--gc-grace", "60"])
    try:
        yield e
    finally:
        teardown_node_env(e)


def test_libcni_chain_with_tuning_bandwidth_portmap(env: NodeEnv, tmp_path: Path) -> None:
    harness = build_harness()
    chain = [env.shim.conflist["plugins"][0],
             {"type": "tuning", "sysctl": {"net.core.somaxconn": "321"}},
             {"type": "bandwidth", "capabilities": {"bandwidth": True}},
             {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]
    conflist = tmp_path / "chain.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "eniway-chain",
                                    "plugins": chain}))
    # Debian's portmap (plugins 1.1.1) fails CHECK for IPv4-only pods: it looks for
    # ip6tables chains it never created (containernetworking/plugins#819). CHECK runs
    # the same network (same name, so libcni's cached ADD result) without it.
    check_list = tmp_path / "check.conflist"
    check_list.write_text(json.dumps({"cniVersion": "1.0.0", "name": "eniway-chain",
                                      "plugins": chain[:3]}))
    pod = env.net.pod_netns()
    uid = env.op.create_pod("default", "lc")
    caps = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 1_000_000}}
    base = [str(harness), "-conflist", str(conflist), "-netns", f"/run/netns/{pod}",
            "-id", "libcni-1", "-path", str(env.shim.bin_dir), "-cache", str(tmp_path / "cache"),
            "-args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=lc;K8S_POD_UID={uid}",
            "-caps", json.dumps(caps)]  # the same RuntimeConf for add, check and del

    def run(action: str, *extra: str) -> subprocess.CompletedProcess[str]:
        # Like a runtime on the node: plugins run in the node's network namespace.
        return subprocess.run(["ip", "netns", "exec", env.net.node_ns, base[0], action,
                               *base[1:], *extra], capture_output=True, text=True, timeout=120)

    add = run("add")
    assert add.returncode == 0, add.stderr + env.agent.tail()
    result = json.loads(add.stdout)
    ip = result["ips"][0]["address"].split("/")[0]
    assert ip.startswith(f"10.{env.net.n}.0.")
    veth = contract.veth_name("default", "lc")
    assert [i["name"] for i in result["interfaces"]][:2] == [veth, "eth0"]
    assert sh(f"ip netns exec {pod} sysctl -n net.core.somaxconn").stdout.strip() == "321"
    qdisc = sh(f"ip netns exec {env.net.node_ns} tc qdisc show dev {veth}", check=False)
    assert "tbf" in qdisc.stdout, (qdisc, env.net.node("link").stdout)
    nat = sh(f"ip netns exec {env.net.node_ns} iptables -t nat -S").stdout
    assert f"{ip}:80" in nat, nat
    assert env.net.ping(pod, env.net.gateway)

    check = run("check", "-conflist", str(check_list))
    assert check.returncode == 0, check.stderr
    env.net.node(f"rule del pref 512 to {ip}")
    broken = run("check", "-conflist", str(check_list))
    assert broken.returncode == 1 and '"code":101' in broken.stderr.replace(" ", "")
    wait_for(lambda: run("check", "-conflist", str(check_list)).returncode == 0, 10,
             "GC repair of the rule")

    dele = run("del")
    assert dele.returncode == 0, dele.stderr
    assert f"{ip}:80" not in sh(f"ip netns exec {env.net.node_ns} iptables -t nat -S").stdout
    assert run("del").returncode == 0  # idempotent through the whole chain
    env.net.remove_pod_netns(pod)
    env.op.delete_pod("default", "lc")
    wait_for(lambda: env.pod_artifacts() == [], 10, "nothing left")


def test_podman_container_gets_an_eniway_address(env: NodeEnv, tmp_path: Path) -> None:
    if not shutil.which("podman") or not shutil.which("runc"):
        pytest.fail("podman and runc are required (make deps)")
    busybox = shutil.which("busybox")
    if not busybox:
        pytest.fail("busybox-static is required (make deps)")
    rootfs = tmp_path / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy(busybox, rootfs / "bin" / "busybox")
    netd = tmp_path / "net.d"
    netd.mkdir()
    (netd / "eniway.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "eniway",
        "plugins": [env.shim.conflist["plugins"][0]]}))
    conf = tmp_path / "containers.conf"
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        "[network]\n"
        'network_backend = "cni"\n'
        f'cni_plugin_dirs = ["{env.shim.bin_dir}"]\n'
        f'network_config_dir = "{netd}"\n'
        "[engine]\n"
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        'runtime = "runc"\n')
    name = f"ewpm-{env.net.tag}"
    script = ("ip -4 -o addr show eth0; ip route; "
              f"ping -c 2 -W 2 {env.net.gateway} >/dev/null && echo GATEWAY-OK; "
              f"ping -c 1 -W 2 {env.net.node_ip} >/dev/null && echo NODE-OK")
    short = Path(tempfile.mkdtemp(prefix="ewpm", dir="/tmp"))  # podman: runroot < 50 chars
    try:
        p = subprocess.run(
            ["podman", "--root", str(short / "storage"), "--runroot", str(short / "run"),
             "--storage-driver", "vfs", "run", "--rm", "--name", name, "--network", "eniway",
             "--rootfs", str(rootfs), "/bin/busybox", "sh", "-c", script],
            env={**os.environ, "CONTAINERS_CONF": str(conf)}, capture_output=True, text=True,
            timeout=180)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert p.returncode == 0, p.stdout + p.stderr + env.agent.tail()
    assert f"inet 10.{env.net.n}.0.1" in p.stdout  # an ENI secondary IP (.101-.103)
    assert "default via 169.254.1.1" in p.stdout
    assert "GATEWAY-OK" in p.stdout and "NODE-OK" in p.stdout, p.stdout
    # podman ran DEL when the container exited (--rm): nothing left on the node.
    wait_for(lambda: env.pod_artifacts() == [], 15, "podman's DEL cleaned up")
