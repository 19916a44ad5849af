"""``helm install``, ``upgrade`` and ``uninstall`` of the chart on real nodes.

A ``ChartBox``: the real control plane, eniway-cloudsim in network mode, two
``ecs.g6.xlarge`` instances made real nodes (containerd, kubelet v1.20.2), and eniway's
image, built offline, imported into each node's containerd. Nothing of eniway runs but what
the chart makes: the init container installs the CNI binary and conflist on each node, the
agent DaemonSet's pods (host network, the chart's RBAC) serve the CNI calls containerd
makes, the operator Deployment's two replicas elect one leader that warms the pools.
Application pods get VPC addresses and talk across nodes; ``helm upgrade`` to a new image
tag rolls the agents under running traffic; ``helm uninstall`` (its hook included) leaves
no finalizer, no namespace stuck and no ENI in the cloud. The tests follow one release in
file order. Prints the image's size and the time from ``helm install`` to the first
application pod Running.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e import _talk

from chartbox import ChartBox, image_sizes
from clusterbox import NodeSpec, wait_for
from cni_plugin import contract

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

A, B = "hn-a", "hn-b"
NODES = [NodeSpec(A, "ecs.g6.xlarge"), NodeSpec(B, "ecs.g6.xlarge")]
APP = "web"
NEW_TAG = "0.1.0-rebuilt"
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def box() -> Iterator[ChartBox]:
    if os.geteuid() != 0:
        pytest.fail("real-node tests need root (network namespaces)")
    b = ChartBox(NODES, pool_config={"ip_cooldown": "0s"})
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _ready(pod: dict[str, Any]) -> bool:
    conds = pod["status"].get("conditions", [])
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _agents(box: ChartBox, image: str = "") -> dict[str, dict[str, Any]]:
    """The ready agent pods by node (only those running ``image`` when given)."""
    out = {}
    for p in box.component("agent"):
        if _ready(p) and not p["metadata"].get("deletionTimestamp") and (
                not image or p["spec"]["containers"][0]["image"] == image):
            out[p["spec"]["nodeName"]] = p
    return out


def _lease_holder(box: ChartBox) -> str:
    lease = box.get("lease", "eniway-operator", "-n", box.namespace)
    return str(lease["spec"].get("holderIdentity") or "")


def _warm(box: ChartBox) -> bool:
    pools = box.pools()
    return set(pools) == {A, B} and all(
        p.get("status", {}).get("counts", {}).get("free", 0) >= 2 for p in pools.values())


def _pair(box: ChartBox) -> tuple[dict[str, Any], dict[str, Any]]:
    pods = box.running_pods(f"app={APP}")
    on = {n: next(p for p in pods if p["spec"]["nodeName"] == n) for n in (A, B)}
    return on[A], on[B]


def test_install_runs_eniway_from_its_chart(box: ChartBox) -> None:
    t0 = time.monotonic()
    box.install()
    box.deployment(APP, 4, even=True)  # at once: its pods wait for the network
    first = wait_for(lambda: box.running_pods(f"app={APP}"), 240,
                     "the first application pod Running", interval=0.2)
    FIGURES["install_to_running_s"] = time.monotonic() - t0
    # The init container put the CNI binary and the conflist on each node's own paths.
    for node in box.node_by_name.values():
        assert node.real is not None
        assert (node.real.node_path("/opt/cni/bin") / "eniway").is_file()
        conflist = json.loads(next(node.real.node_path("/etc/cni/net.d").glob(
            "*eniway*.conflist")).read_text())
        assert [p["type"] for p in conflist["plugins"]][:1] == ["eniway"]
    agents = wait_for(lambda: len(a := _agents(box)) == 2 and a, 120, "an agent on each node")
    assert all(a["spec"]["hostNetwork"] for a in agents.values())
    # Two operator replicas, one on each node, one of them the leader.
    operators = wait_for(lambda: len(o := [p for p in box.component("operator")
                                           if p["status"].get("phase") == "Running"]) == 2
                         and o, 120, "two operator replicas")
    assert {p["spec"]["nodeName"] for p in operators} == {A, B}
    holder = wait_for(lambda: _lease_holder(box), 60, "the operator's Lease held")
    assert holder in {p["metadata"]["name"] for p in operators}
    wait_for(lambda: _warm(box), 180, "each node's pool warm")
    pods = box.wait_running(APP, 4)
    assert first[0]["status"]["podIP"] in {p["status"]["podIP"] for p in pods}
    podips = {pi["spec"]["ip"]: pi for pi in box.podips()}
    for p in pods:
        assert podips[p["status"]["podIP"]]["spec"]["nodeName"] == p["spec"]["nodeName"]
    a, b = _pair(box)
    _talk(box, a, b)
    _talk(box, b, a)
    print(f"\nhelm install to the first application pod Running: "
          f"{FIGURES['install_to_running_s']:.1f} s")


def _ping_start(box: ChartBox, src: dict[str, Any], ip: str) -> None:
    """A ping every 0.2 s from inside ``src``, in the background, into a file there."""
    res = box.exec(src, "sh", "-c", f"ping -i 0.2 {ip} > /tmp/ping.log 2>&1 &")
    assert res.returncode == 0, res.stderr


def _ping_stop(box: ChartBox, src: dict[str, Any]) -> tuple[int, int]:
    """(sent, the longest run of lost replies) of the background ping."""
    box.exec(src, "killall", "-INT", "ping")
    log = box.exec(src, "cat", "/tmp/ping.log").stdout
    seqs = sorted(int(m) for m in re.findall(r"seq=(\d+)", log))
    sent = int(m.group(1)) if (m := re.search(r"(\d+) packets transmitted", log)) else (
        seqs[-1] + 1 if seqs else 0)
    got = set(seqs)
    longest = run = 0
    for seq in range(sent):
        run = 0 if seq in got else run + 1
        longest = max(longest, run)
    return sent, longest


def test_upgrade_rolls_the_agents_under_traffic(box: ChartBox) -> None:
    a, b = _pair(box)
    old = box.get("daemonset", f"{box.release}-agent", "-n", box.namespace)
    old_image = old["spec"]["template"]["spec"]["containers"][0]["image"]
    new_image = box.tag_image(NEW_TAG)
    _ping_start(box, a, b["status"]["podIP"])
    t0 = time.monotonic()
    box.upgrade(f"--set=image.tag={NEW_TAG}")
    wait_for(lambda: len(_agents(box, new_image)) == 2 and not [
        p for p in box.component("agent") if p["spec"]["containers"][0]["image"] == old_image],
        240, "both agents rolled to the new image", interval=0.2)
    rolled = time.monotonic() - t0
    _talk(box, a, b)
    sent, gap = _ping_stop(box, a)
    print(f"\nhelm upgrade: both agents rolled in {rolled:.1f} s; pings {a['spec']['nodeName']}"
          f" -> {b['spec']['nodeName']} every 0.2 s meanwhile: {sent} sent, longest loss {gap}")
    assert sent >= 5 * rolled * 0.5, f"the ping did not run through the rollout: {sent}"
    assert gap <= 1, f"{gap} replies in a row lost while the agents rolled"
    # The same pods, still talking; new pods get addresses from the new agents.
    assert {p["metadata"]["uid"] for p in _pair(box)} == {a["metadata"]["uid"],
                                                          b["metadata"]["uid"]}
    box.scale(APP, 8)
    pods = box.wait_running(APP, 8)
    fresh = [p for p in pods if p["metadata"]["uid"] not in {a["metadata"]["uid"],
                                                             b["metadata"]["uid"]}]
    new_a = next(p for p in fresh if p["spec"]["nodeName"] == A)
    _talk(box, new_a, b)
    # The operator Deployment rolled too: two replicas on the new image, one leading.
    wait_for(lambda: sorted(_ready(p) and p["spec"]["containers"][0]["image"] == new_image
                            for p in box.component("operator")) == [True, True], 240,
             "both operator replicas on the new image")
    assert _lease_holder(box) in {p["metadata"]["name"] for p in box.component("operator")}


def _who(obj: dict[str, Any]) -> str:
    """An object's name, when it was made and deleted, and who wrote it when."""
    meta = obj["metadata"]
    writes = [(f.get("manager"), f.get("operation"), f.get("time"))
              for f in meta.get("managedFields", [])]
    return (f"{meta['name']} created {meta.get('creationTimestamp')} deleted "
            f"{meta.get('deletionTimestamp')} by {writes}")


def test_uninstall_leaves_nothing_stuck(box: ChartBox) -> None:
    box.kube.kubectl("delete", "deployment", APP)
    wait_for(lambda: not box.pods(f"app={APP}") and not box.podips(), 180,
             "application pods and their PodIPs gone")
    t0 = time.monotonic()
    try:
        box.uninstall("--timeout=5m")
    except RuntimeError as e:  # a failed hook keeps its Job's pods: their log says why
        logs = box.kube.kubectl("logs", "-n", box.namespace, "-l",
                                "app.kubernetes.io/component=uninstall", "--tail=-1",
                                "--prefix", check=False)
        raise AssertionError(f"{e}\nthe hook's log:\n{logs.stdout}{logs.stderr}") from e
    took = time.monotonic() - t0
    assert box.release not in box.helm("list", "-A", "-q").split()
    for kind in ("enis", "podips", "enipools"):
        stuck = [_who(o) for o in box.get(kind, "-A")["items"] if o["metadata"].get("finalizers")]
        assert not stuck, f"{kind} with finalizers left: {stuck}"
    assert box.cloud is not None
    left = [e.eni_id for e in box.cloud.provider().describe_enis(
        tags={contract.TAG_CLUSTER: box.cluster_id})]
    assert not left, f"ENIs of the cluster left in the cloud: {left}"
    res = box.kube.kubectl("delete", "namespace", box.namespace, "--timeout=120s", check=False)
    assert res.returncode == 0, res.stderr
    print(f"\nhelm uninstall (its hook: ENIs detached and deleted) in {took:.1f} s")


def test_figures(box: ChartBox) -> None:
    tarball, unpacked = image_sizes(box.image)
    print(f"\nimage {box.image_ref}: docker-archive {tarball / 1e6:.0f} MB, unpacked "
          f"{unpacked / 1e6:.0f} MB; helm install to the first application pod Running: "
          f"{FIGURES.get('install_to_running_s', float('nan')):.1f} s")
    assert unpacked > 0 and tarball >= unpacked * 0.9
