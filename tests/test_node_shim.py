"""The CNI shim on its own: spec versions, errors with codes, and DEL without the agent
(the slow path cleans the host side from the store on disk)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from node_harness import Shim, sh

from cni_plugin import contract
from cni_plugin.shim import dumps, format_result, loads, parse_cni_args


@pytest.fixture
def shim(tmp_path: Path) -> Shim:
    return Shim(tmp_path, str(tmp_path / "run" / "eniway.sock"), str(tmp_path / "state"))


AGENT_ANSWER = {"ip": "10.1.0.5", "gateway": contract.POD_GATEWAY, "mtu": 1500,
                "hostVeth": "eni0123456789a", "hostMac": "02:00:00:00:00:01",
                "podMac": "02:00:00:00:00:02", "ifname": "eth0", "netns": "/run/netns/x"}


@pytest.mark.parametrize("version", contract.CNI_SUPPORTED_VERSIONS)
def test_result_in_every_supported_version(version: str) -> None:
    res = format_result(version, AGENT_ANSWER)
    assert res["cniVersion"] == version
    assert res["ips"][0]["address"] == "10.1.0.5/32"
    assert res["ips"][0]["gateway"] == contract.POD_GATEWAY
    assert res["interfaces"][res["ips"][0]["interface"]]["sandbox"] == "/run/netns/x"
    assert ("version" in res["ips"][0]) == version.startswith("0.")
    assert ("mtu" in res["interfaces"][1]) == (version == "1.1.0")
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": contract.POD_GATEWAY}]


def test_json_helpers_match_the_json_module() -> None:
    doc = {"a": [1, 2.5, None, True, False, "é\n\""], "b": {"c": {}}, "d": []}
    assert json.loads(dumps(doc)) == doc
    assert loads(json.dumps(doc, indent=2)) == doc
    for bad in ("", "{", "{} x", "[1,]"):
        with pytest.raises(ValueError):
            loads(bad)
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a;K8S_POD_NAMESPACE=b;x") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "a", "K8S_POD_NAMESPACE": "b"}


def test_version(shim: Shim) -> None:
    r = shim.run("VERSION", conf={"cniVersion": "1.1.0"})
    assert r.rc == 0
    assert r.out["supportedVersions"] == list(contract.CNI_SUPPORTED_VERSIONS)


def test_bad_input_codes(shim: Shim, tmp_path: Path) -> None:
    netns = "/proc/self/ns/net"
    cases = [
        (dict(command="ADD", container_id="c1", netns=netns, conf="{not json"),
         contract.ERR_DECODE, "cannot decode"),
        (dict(command="ADD", container_id="c1", netns=netns, conf=shim.conf("9.9.9")),
         contract.ERR_INCOMPATIBLE_VERSION, "unsupported cniVersion '9.9.9'"),
        (dict(command="ADD", container_id="", netns=netns), contract.ERR_INVALID_ENV,
         "CNI_CONTAINERID not set"),
        (dict(command="ADD", container_id="c1", netns=""), contract.ERR_INVALID_ENV,
         "CNI_NETNS not set"),
        (dict(command="ADD", container_id="c1", netns="/run/netns/does-not-exist"),
         contract.ERR_INVALID_ENV, "/run/netns/does-not-exist does not exist"),
        (dict(command="BOGUS", container_id="c1", netns=netns), contract.ERR_INVALID_ENV,
         "CNI_COMMAND='BOGUS'"),
        (dict(command="CHECK", container_id="c1", netns=netns, conf=shim.conf("0.3.1")),
         contract.ERR_INCOMPATIBLE_VERSION, "CHECK needs cniVersion 0.4.0"),
        (dict(command="GC", conf=shim.conf("1.0.0")), contract.ERR_INCOMPATIBLE_VERSION,
         "GC needs cniVersion 1.1.0"),
        # What the CNI spec forbids: refused before the agent is even asked.
        (dict(command="ADD", container_id="c1\nc2", netns=netns), contract.ERR_INVALID_ENV,
         "is not a container ID"),
        (dict(command="DEL", container_id="_c1"), contract.ERR_INVALID_ENV,
         "is not a container ID"),
        (dict(command="ADD", container_id="c1", netns=netns, ifname="a:b"),
         contract.ERR_INVALID_ENV, "is not an interface name"),
        (dict(command="ADD", container_id="c1", netns=netns, ifname="x" * 16),
         contract.ERR_INVALID_ENV, "longer than 15 bytes"),
        (dict(command="CHECK", container_id="c1", netns="proc/self/ns/net"),
         contract.ERR_INVALID_ENV, "is not an absolute path"),
        (dict(command="ADD", container_id="c1", netns=netns, env={"CNI_ARGS": "A=1;;B=2"}),
         contract.ERR_INVALID_ENV, "CNI_ARGS has a malformed pair"),
        (dict(command="ADD", container_id="c1", netns=netns, pod=("ns", "Pod_1", "u")),
         contract.ERR_INVALID_ENV, "K8S_POD_NAME 'Pod_1' is not a Kubernetes name"),
    ]
    for kw, code, text in cases:
        r = shim.run(**kw)
        assert r.rc == 1, kw
        assert r.out["code"] == code, (kw, r.out)
        assert text in r.out["msg"], (kw, r.out)
        assert r.out["cniVersion"] in contract.CNI_SUPPORTED_VERSIONS
    r = shim.run("ADD", "c1", netns, drop=("CNI_COMMAND",))
    assert (r.rc, r.out["code"]) == (1, contract.ERR_INVALID_ENV)
    assert not (tmp_path / "state" / contract.STORE_ALLOC_DIR).exists()  # nothing written


def test_agent_down_add_try_again_and_status_unavailable(shim: Shim) -> None:
    r = shim.run("ADD", "c1", "/proc/self/ns/net")
    assert r.rc == 1 and r.out["code"] == contract.ERR_TRY_AGAIN
    assert "eniway-agent is not reachable" in r.out["msg"] and "eniway.sock" in r.out["msg"]
    r = shim.run("STATUS", conf=shim.conf("1.1.0"))
    assert r.rc == 1 and r.out["code"] == contract.ERR_PLUGIN_NOT_AVAILABLE
    r = shim.run("DEL", "never-added")
    assert r.rc == 0 and r.out == {}


@pytest.mark.usefixtures("root")
def test_del_without_agent_cleans_host_side_from_store(shim: Shim, tmp_path: Path) -> None:
    node = f"ewshim-{os.getpid()}"
    sh(f"ip netns add {node}")
    try:
        ip, veth = "10.66.0.7", contract.veth_name("ns", "pod")
        sh(f"ip -n {node} link add {veth} type veth peer name peer0")
        sh(f"ip -n {node} link set {veth} up")
        sh(f"ip -n {node} route add {ip}/32 dev {veth} scope link")
        sh(f"ip -n {node} rule add pref 512 to {ip}/32 lookup main")
        sh(f"ip -n {node} rule add pref 2048 from {ip}/32 lookup 1003")
        adir = tmp_path / "state" / contract.STORE_ALLOC_DIR
        adir.mkdir(parents=True)
        other = {"ip": "10.66.0.8", "containerId": "other", "ifname": "eth0", "veth": "x",
                 "hostNetns": node}
        (adir / "10.66.0.8").write_text(json.dumps(other))
        (adir / ip).write_text(json.dumps({"ip": ip, "containerId": "c1", "ifname": "eth0",
                                           "veth": veth, "hostNetns": node}))
        lock = os.open(tmp_path / "state" / contract.STORE_LOCK_FILE, os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)  # an agent alive but not answering: retry later
        r = shim.run("DEL", "c1")
        assert r.rc == 1 and r.out["code"] == contract.ERR_TRY_AGAIN
        os.close(lock)
        r = shim.run("DEL", "c1")
        assert r.rc == 0, r
        assert veth not in sh(f"ip -n {node} link show").stdout
        rules = sh(f"ip -n {node} rule show").stdout
        assert ip not in rules, rules
        assert sorted(p.name for p in adir.iterdir()) == ["10.66.0.8"]  # others untouched
        assert shim.run("DEL", "c1").rc == 0  # idempotent
    finally:
        sh(f"ip netns del {node}", check=False)
