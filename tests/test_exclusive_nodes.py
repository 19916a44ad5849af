"""Exclusive ENIs on real nodes: the cluster in a box (real control plane and scheduler,
eniway-cloudsim in network mode with a 1 s attach and detach delay, two ``ecs.g6.xlarge``
instances and one ``ecs.t6-c1m2.large`` (a family that cannot attach ENIs while running)
made real nodes with containerd and kubelet v1.20.2, their agents, the operator),
``exclusive_enis: 1`` so each node that can offers one slot.

A pod with the annotation and the ``network.eniway.io/eni`` request becomes Running through
kubelet with its own ENI (IP and MAC inside the container) and talks to a shared-mode pod
on the other node; a StatefulSet's fixed-IP pod follows its ENI to the other node when its
node is cordoned and the pod deleted, also with the operator killed right after the delete;
nothing leaks; the t6 node offers no slot, says why in an Event, and an exclusive pod meant
for it stays Pending with the scheduler's reason. Prints create-to-Running figures
(exclusive vs shared) and the move times.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_e2e import _talk

from clusterbox import ClusterBox, NodeSpec, pod_spec, wait_for
from cni_plugin import contract
from eniway_operator.exclusive_reconcile import TAG_CLAIM

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

A, B, C = "xn-a", "xn-b", "xn-c"
NO_HOT_PLUG = "ecs.t6-c1m2.large"
NODES = [NodeSpec(A, "ecs.g6.xlarge"), NodeSpec(B, "ecs.g6.xlarge"), NodeSpec(C, NO_HOT_PLUG)]
FIXED = "fixed"  # the StatefulSet; its pod is fixed-0, its ENI's claim default/fixed-0
CLAIM = f"default/{FIXED}-0"
RELEASE_AFTER = 10
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def box() -> Iterator[ClusterBox]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces)")
    b = ClusterBox(NODES, pool_config={"exclusive_enis": 1}, attach_delay=1.0,
                   operator_args=("--exclusive-interval", "1", "--lease-duration", "8"))
    b.start()
    try:
        wait_for(lambda: all(_slots(b, n) == "1" for n in (A, B)), 120,
                 "one exclusive slot published on each node")
        wait_for(lambda: all(
            b.pools()[n].get("status", {}).get("counts", {}).get("free", 0) >= 2
            for n in (A, B)), 120, "warm pools on the nodes that can attach ENIs")
        # a shared-mode peer on each node, for traffic to and from the exclusive pods
        _apply(b, *(_pod(f"peer-{n}", "peer", exclusive=False, node=n) for n in (A, B)))
        b.wait_running("peer", 2)
        yield b
    finally:
        b.stop()


def _slots(box: ClusterBox, node: str) -> str:
    alloc = box.get("node", node)["status"].get("allocatable", {})
    return str(alloc.get(contract.RESOURCE_EXCLUSIVE_ENI, ""))


def _exclusive(spec: dict[str, Any], meta: dict[str, Any]) -> None:
    spec["containers"][0]["resources"] = {"limits": {contract.RESOURCE_EXCLUSIVE_ENI: "1"}}
    meta["annotations"] = {contract.ANNOTATION_EXCLUSIVE_ENI: "true"}


def _pod(name: str, app: str, exclusive: bool, node: str = "") -> dict[str, Any]:
    spec, meta = pod_spec(), {"name": name, "labels": {"app": app}}
    if exclusive:
        _exclusive(spec, meta)
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _apply(box: ClusterBox, *objs: dict[str, Any]) -> None:
    box.kube.kubectl("apply", "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def _peer(box: ClusterBox, node: str) -> dict[str, Any]:
    return next(p for p in box.running_pods("app=peer") if p["spec"]["nodeName"] == node)


def _cloud_exclusive(box: ClusterBox) -> list[Any]:
    assert box.cloud is not None
    return [e for e in box.cloud.provider().describe_enis(
        tags={contract.TAG_CLUSTER: box.cluster_id})
        if e.tags.get(contract.TAG_MODE) == contract.TAG_MODE_EXCLUSIVE]


def _eni_of(box: ClusterBox, claim: str) -> Any:
    found = [e for e in _cloud_exclusive(box) if e.tags.get(TAG_CLAIM) == claim]
    assert len(found) <= 1, f"more than one exclusive ENI for {claim}: {found}"
    return found[0] if found else None


def _sees_its_eni(box: ClusterBox, pod: dict[str, Any], eni: Any) -> None:
    """Inside the container (kubectl exec through kubelet and containerd): eth0 is the
    ENI, its MAC and its primary IP."""
    assert pod["status"]["podIP"] == eni.primary_ip
    mac = box.exec(pod, "cat", "/sys/class/net/eth0/address")
    assert mac.returncode == 0 and mac.stdout.strip() == eni.mac.lower(), mac
    link = box.exec(pod, "ip", "addr", "show", "eth0").stdout
    assert eni.mac.lower() in link and f"{eni.primary_ip}/" in link, link


def _fixed_pod(box: ClusterBox, old_uid: str, node: str) -> dict[str, Any] | None:
    for p in box.running_pods(f"app={FIXED}"):
        if p["metadata"]["uid"] != old_uid and p["spec"]["nodeName"] == node:
            return p
    return None


def _move(box: ClusterBox, pod: dict[str, Any], dst: str, kill_operator: bool = False
          ) -> tuple[dict[str, Any], float]:
    """Cordon the pod's node, delete the pod; its StatefulSet re-creates it and the
    scheduler can only put it on ``dst``. Returns the new pod and delete-to-Running."""
    src = pod["spec"]["nodeName"]
    box.kube.kubectl("uncordon", dst)
    box.kube.kubectl("cordon", src)
    t0 = time.monotonic()
    box.kube.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=false")
    if kill_operator:
        box.stop_operator(signal.SIGKILL)
        box.start_operator()
    moved = wait_for(lambda: _fixed_pod(box, pod["metadata"]["uid"], dst), 150,
                     f"{FIXED}-0 Running on {dst}", interval=0.2)
    took = time.monotonic() - t0
    return moved, took


def test_exclusive_pod_owns_its_eni_through_kubelet_and_talks(box: ClusterBox) -> None:
    _apply(box, _pod("own-0", "own", exclusive=True, node=A))
    own = box.wait_running("own", 1, 120)[0]
    eni = _eni_of(box, own["metadata"]["uid"])
    assert eni is not None and eni.instance_id == box.node_by_name[A].instance_id
    _sees_its_eni(box, own, eni)
    res = box.get("enis", eni.eni_id)["spec"]
    assert (res["mode"], res["podNamespace"], res["podName"], res["nodeName"]) == (
        contract.MODE_EXCLUSIVE, "default", "own-0", A)
    peer = _peer(box, B)
    _talk(box, own, peer)
    _talk(box, peer, own)
    box.kube.kubectl("delete", "pod", "own-0")
    wait_for(lambda: _eni_of(box, own["metadata"]["uid"]) is None, 60,
             "the Elastic ENI deleted with its pod")


def _unschedulable(box: ClusterBox, name: str) -> str:
    for c in box.get("pod", name)["status"].get("conditions") or []:
        if c["type"] == "PodScheduled" and c["status"] == "False":
            return str(c.get("message", ""))
    return ""


def test_node_that_cannot_hot_plug_takes_no_exclusive_pod(box: ClusterBox) -> None:
    """A t6 node offers 0 slots, with a HotSwapUnsupported Event saying why; an exclusive
    pod meant for it stays Pending, the real scheduler finding no slot there."""
    wait_for(lambda: _slots(box, C) == "0", 60, f"{C} offers 0 slots")

    def why() -> str:
        events = box.get("events", "-n", "default", "--field-selector",
                         f"involvedObject.kind=Node,involvedObject.name={C}")["items"]
        return next((e["message"] for e in events if e["reason"] == "HotSwapUnsupported"
                     and "exclusive" in e["message"]), "")

    message = wait_for(why, 60, f"a HotSwapUnsupported Event on {C}")
    assert NO_HOT_PLUG in message, message
    _apply(box, _pod("nohot-0", "nohot", exclusive=True, node=C))
    try:
        reason = wait_for(lambda: _unschedulable(box, "nohot-0"), 60, "the scheduler's reason")
        assert f"Insufficient {contract.RESOURCE_EXCLUSIVE_ENI}" in reason, reason
        pod = box.get("pod", "nohot-0")
        assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
        assert _eni_of(box, pod["metadata"]["uid"]) is None, "no ENI made for it"
    finally:
        box.kube.kubectl("delete", "pod", "nohot-0", "--wait=false")


def _statefulset(box: ClusterBox) -> None:
    assert box.topology is not None
    spec, meta = pod_spec(), {"labels": {"app": FIXED}}
    _exclusive(spec, meta)
    _apply(box, {
        "apiVersion": contract.API_VERSION, "kind": contract.KIND_EXCLUSIVE_POLICY,
        "metadata": {"name": "xn-fixed"},
        "spec": {"selector": {"podSelector": {"matchLabels": {"app": FIXED}}},
                 "securityGroupIDs": [box.topology.security_group_id], "ipType": "Fixed",
                 "releaseAfter": f"{RELEASE_AFTER}s"}})
    _apply(box, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": FIXED},
        "spec": {"replicas": 1, "serviceName": FIXED,
                 "selector": {"matchLabels": {"app": FIXED}},
                 "template": {"metadata": meta, "spec": spec}}})


def test_fixed_ip_follows_its_pod_to_the_other_node(box: ClusterBox) -> None:
    _statefulset(box)
    pod = box.wait_running(FIXED, 1, 120)[0]
    eni = _eni_of(box, CLAIM)
    assert eni is not None
    _sees_its_eni(box, pod, eni)
    src = pod["spec"]["nodeName"]
    dst = B if src == A else A
    try:
        moved, took = _move(box, pod, dst)
    finally:
        box.kube.kubectl("uncordon", src)
    FIGURES["move_s"] = took
    print(f"\nfixed-IP pod deleted on {src}, Running on {dst} with its ENI in {took:.2f} s")
    after = _eni_of(box, CLAIM)
    assert (after.eni_id, after.mac, after.primary_ip) == (eni.eni_id, eni.mac, eni.primary_ip)
    assert after.instance_id == box.node_by_name[dst].instance_id
    _sees_its_eni(box, moved, eni)
    _talk(box, _peer(box, src), moved)
    _talk(box, moved, _peer(box, src))


def test_operator_killed_while_the_fixed_eni_moves_converges(box: ClusterBox) -> None:
    pod = box.wait_running(FIXED, 1)[0]
    eni = _eni_of(box, CLAIM)
    assert eni is not None
    src = pod["spec"]["nodeName"]
    dst = B if src == A else A
    try:
        moved, took = _move(box, pod, dst, kill_operator=True)
    finally:
        box.kube.kubectl("uncordon", src)
    FIGURES["move_killed_s"] = took
    print(f"\nfixed-IP move with the operator killed after the delete: {took:.2f} s")
    _sees_its_eni(box, moved, eni)
    _talk(box, _peer(box, src), moved)
    # nothing leaked: one exclusive ENI in the cloud, the claim's, in use on dst; its
    # resource names the new pod
    left = _cloud_exclusive(box)
    assert [(e.eni_id, e.status, e.instance_id) for e in left] == [
        (eni.eni_id, "InUse", box.node_by_name[dst].instance_id)], left
    exclusive_res = [e for e in box.enis() if e["spec"].get("mode") == contract.MODE_EXCLUSIVE]
    assert [e["metadata"]["name"] for e in exclusive_res] == [eni.eni_id]
    assert exclusive_res[0]["spec"]["nodeName"] == dst
    # the StatefulSet gone: the ENI is detached, kept releaseAfter unclaimed, then deleted
    box.kube.kubectl("delete", "statefulset", FIXED)
    wait_for(lambda: (box.get("enis", eni.eni_id).get("status") or {}).get("unclaimedSince"),
             60, "unclaimed clock started")
    t0 = time.monotonic()
    wait_for(lambda: not _cloud_exclusive(box), RELEASE_AFTER + 60, "released after releaseAfter")
    assert time.monotonic() - t0 >= RELEASE_AFTER - 3, "released before releaseAfter"


def _create_to_running(box: ClusterBox, app: str, exclusive: bool) -> list[float]:
    """One pod per node created together; each one's seconds from the apply to Running
    (polled every 0.2 s with kubectl: about 0.3 s resolution)."""
    t0 = time.monotonic()
    _apply(box, *(_pod(f"{app}-{n}", app, exclusive, node=n) for n in (A, B)))
    took: dict[str, float] = {}
    while len(took) < 2:
        assert time.monotonic() - t0 < 120, f"{app} not Running: {box.pods(f'app={app}')}"
        for p in box.running_pods(f"app={app}"):
            took.setdefault(p["metadata"]["name"], time.monotonic() - t0)
        time.sleep(0.2)
    box.kube.kubectl("delete", "pods", "-l", f"app={app}")
    wait_for(lambda: not box.pods(f"app={app}"), 60, f"{app} pods gone")
    if exclusive:
        wait_for(lambda: not _cloud_exclusive(box), 60, "their Elastic ENIs deleted")
    return list(took.values())


def test_create_to_running_figures(box: ClusterBox) -> None:
    shared: list[float] = []
    exclusive: list[float] = []
    for i in range(3):
        shared += _create_to_running(box, f"bs{i}", exclusive=False)
        exclusive += _create_to_running(box, f"bx{i}", exclusive=True)
    xs, ss = statistics.median(exclusive), statistics.median(shared)
    print(f"\ncreate-to-Running p50 on real nodes, 1 s attach delay: exclusive {xs:.2f} s "
          f"(n={len(exclusive)}: {', '.join(f'{t:.2f}' for t in sorted(exclusive))}), "
          f"shared {ss:.2f} s (n={len(shared)}: "
          f"{', '.join(f'{t:.2f}' for t in sorted(shared))}), ratio {xs / ss:.1f}")
    for key, label in (("move_s", "fixed-IP move"),
                       ("move_killed_s", "fixed-IP move, operator killed")):
        if key in FIGURES:
            print(f"{label}: {FIGURES[key]:.2f} s (delete to Running on the other node)")
    assert len(exclusive) == len(shared) == 6
    assert xs > 1.0, "an exclusive pod waits at least for its ENI's attach"
