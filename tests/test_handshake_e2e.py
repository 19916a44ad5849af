"""The release handshake under faults, with the real operator, the real agent, the CNI
binary run by a kubelet stand-in, and the emulator's network (clusterbox): no IP a pod
holds is ever unassigned in the cloud, whatever fails in between.

Each test drives the release list through mark -> unmark -> mark (the node's pool bounds
lowered, raised and lowered again in its ENIPool ``spec.config``) while PodIP writes are
refused (a ResourceQuota on ``count/podips.network.eniway.io``), the agent is killed, or
the API server cannot write (etcd paused). Cloud unassigns are held back by an injected
error until the list has moved, so the moves happen inside the operator's batch wait on
any machine. A monitor compares, every fraction of a second and after every step, the IPs
the node's store and the pods hold with the cloud's assignments (DescribeNetworkInterfaces
through the SDK).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from clusterbox import ClusterBox, NodeSpec, pod_spec, wait_for
from cni_plugin import contract
from eniway_operator.plan import RELEASE_BATCH_WAIT
from eniway_operator.testing import parse_metrics

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

NODE = "hs-a"
QUOTA_NS = "hs-quota"
HOLD = {"code": "Operation.Conflict", "status": 400, "error_rate": 1.0,
        "message": "held back by the test"}


@pytest.fixture(scope="module")
def box() -> Iterator[ClusterBox]:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root (network namespaces)")
    b = ClusterBox([NodeSpec(NODE, "ecs.g6.xlarge")],
                   pool_config={"min_pool_size": 2, "max_pool_size": 5})
    b.start()
    try:
        wait_for(lambda: _counts(b).get("free", 0) >= 2, 180, "warm pool")
        b.kube.kubectl("create", "namespace", QUOTA_NS)
        wait_for(lambda: b.kube.kubectl("get", "serviceaccount", "default", "-n", QUOTA_NS,
                                        check=False).returncode == 0, 60, "service account")
        yield b
    finally:
        with contextlib.suppress(Exception):
            print("--- ENIPool ---\n", json.dumps(b.pools().get(NODE), indent=1)[-3000:])
            print("--- operator log ---\n", "\n".join(b.operator_log().splitlines()[-40:]))
            print("--- agent log ---\n", "\n".join(b.agent_log(NODE).splitlines()[-30:]))
        b.stop()


# -- what the cloud has against what pods hold ------------------------------------------------

def _held(box: ClusterBox) -> dict[str, str]:
    """IP -> holder: the node's allocation store (the agent's truth), and Running pods'
    status.podIPs."""
    out: dict[str, str] = {}
    adir = box.node_by_name[NODE].dir / "state" / contract.STORE_ALLOC_DIR
    for p in adir.iterdir() if adir.exists() else ():
        if p.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError):
            rec = json.loads(p.read_text())
            out[rec["ip"]] = f"record {rec['containerId']}"
    pods = box.get("pods", "-A", "--field-selector", f"spec.nodeName={NODE}")["items"]
    for pod in pods:
        st = pod.get("status") or {}
        if st.get("phase") == "Running":
            for a in st.get("podIPs") or []:
                out.setdefault(a["ip"], f"pod {pod['metadata']['uid']}")
    return out


def _cloud_ips(box: ClusterBox) -> set[str]:
    assert box.cloud is not None
    inst = box.node_by_name[NODE].instance_id
    return {ip for e in box.cloud.provider().describe_enis(instance_id=inst)
            for ip in e.private_ips}


def _unassigned_while_held(box: ClusterBox) -> dict[str, str]:
    """Held before and after reading the cloud, by the same holder, yet not in the cloud."""
    before = _held(box)
    cloud = _cloud_ips(box)
    after = _held(box)
    return {ip: who for ip, who in before.items() if after.get(ip) == who and ip not in cloud}


class Monitor:
    """Checks the invariant continuously in a thread; ``check()`` once more, at a step."""

    def __init__(self, box: ClusterBox) -> None:
        self.box = box
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(Exception):  # the API server may be paused on purpose
                self._record("monitor", _unassigned_while_held(self.box))

    def _record(self, when: str, bad: dict[str, str]) -> None:
        if bad:
            self.violations.append(f"{when}: held yet unassigned in the cloud: {bad}")

    def check(self, step: str) -> None:
        self._record(step, wait_for(lambda: (_unassigned_while_held(self.box),), 30,
                                    "a reading")[0])
        assert not self.violations, "\n".join(self.violations)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


# -- driving the handshake ----------------------------------------------------------------------

def _pool(box: ClusterBox) -> dict[str, Any]:
    pool: dict[str, Any] = box.get("enipool", NODE)
    return pool


def _counts(box: ClusterBox) -> dict[str, int]:
    return dict(((box.pools().get(NODE) or {}).get("status") or {}).get("counts") or {})


def _listed(box: ClusterBox) -> set[str]:
    return set(((_pool(box).get("spec") or {}).get("release") or {}).get("ips") or [])


def _acked(box: ClusterBox) -> set[str]:
    return set(((_pool(box).get("status") or {}).get("agent") or {}).get("acknowledged") or [])


def _bounds(box: ClusterBox, lo: int, hi: int) -> None:
    box.kube.kubectl("patch", "enipool", NODE, "--type=merge", "-p", json.dumps(
        {"spec": {"config": {"min_pool_size": lo, "max_pool_size": hi,
                             # the bounds alone say what is marked: not pods arriving
                             "surge_pending": False}}}))


def _hold_unassigns(box: ClusterBox, hold: bool) -> None:
    assert box.cloud is not None
    if hold:
        box.cloud.admin.set_faults({"UnassignPrivateIpAddresses": HOLD,
                                    "DetachNetworkInterface": HOLD})
    else:
        box.cloud.admin.clear_faults()


def _quota(box: ClusterBox, on: bool) -> None:
    if not on:
        box.kube.kubectl("delete", "resourcequota", "no-podips", "-n", QUOTA_NS,
                         "--ignore-not-found")
        return
    rq = {"apiVersion": "v1", "kind": "ResourceQuota",
          "metadata": {"name": "no-podips", "namespace": QUOTA_NS},
          "spec": {"hard": {f"count/{contract.PLURAL_PODIP}.{contract.GROUP}": "0"}}}
    box.kube.kubectl("apply", "-f", "-", input=json.dumps(rq))
    wait_for(lambda: box.get("resourcequota", "no-podips", "-n", QUOTA_NS)
             .get("status", {}).get("hard"), 60, "quota in force")


def _podip_events(box: ClusterBox, pod: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = box.get(
        "events", "-n", QUOTA_NS, "--field-selector",
        f"involvedObject.kind=Pod,involvedObject.name={pod},reason=PodIPWriteFailed")["items"]
    return items


def _operator_rounds(box: ClusterBox) -> float:
    """Node rounds the operator finished (eniway_reconcile_seconds_count, both results)."""
    try:
        with urllib.request.urlopen(
                f"http://127.0.0.1:{box.operator_metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(v for k, v in parse_metrics(text).items()
               if k.startswith("eniway_reconcile_seconds_count"))


def _lease_failures(box: ClusterBox) -> int:
    log = box.operator_log()
    return log.count("lease renewal error") + log.count("lost the leader lease")


def _pod(box: ClusterBox, name: str, namespace: str = QUOTA_NS) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": {"hs": "1"}},
           "spec": {**pod_spec(), "nodeName": NODE}}  # a real container on the real node
    box.kube.kubectl("apply", "-f", "-", input=json.dumps(pod))


def _pod_ip(box: ClusterBox, name: str, namespace: str = QUOTA_NS) -> str:
    st = box.get("pod", name, "-n", namespace).get("status") or {}
    return str(st.get("podIP") or "") if st.get("phase") == "Running" else ""


def _mark(box: ClusterBox) -> set[str]:
    """Five free IPs, then unassigns held back and the bounds lowered to one: four listed,
    and acknowledged."""
    _hold_unassigns(box, False)
    _bounds(box, 5, 5)
    wait_for(lambda: _counts(box).get("free") == 5 and not _listed(box), 90, "five free IPs")
    _hold_unassigns(box, True)
    _bounds(box, 1, 1)
    marked: set[str] = wait_for(
        lambda: (m := _listed(box)) and len(m) == 4 and m <= _acked(box) and m, 60,
        "marks acknowledged")
    return marked


def _prepare(box: ClusterBox, base_pod: str) -> set[str]:
    """A pod on the ENI (so it is never released whole), PodIPs refused in the quota
    namespace, four IPs marked and acknowledged."""
    _pod(box, base_pod, "default")
    wait_for(lambda: _pod_ip(box, base_pod, "default"), 120, "base pod")
    _quota(box, True)
    return _mark(box)


def _settle(box: ClusterBox, mon: Monitor, step: str) -> None:
    """Unassigns allowed again: wait for the operator to give back what it may."""
    _hold_unassigns(box, False)
    wait_for(lambda: not (_listed(box) - set(_held(box))), 120,
             f"{step}: releasable IPs given back")
    mon.check(step)


def _cleanup(box: ClusterBox, names: list[tuple[str, str]]) -> None:
    _hold_unassigns(box, False)
    for ns, name in names:
        box.kube.kubectl("delete", "pod", name, "-n", ns, "--ignore-not-found", "--wait=false")
    wait_for(lambda: all(box.kube.kubectl("get", "pod", n, "-n", ns, check=False)
                         .returncode != 0 for ns, n in names), 120, "pods gone")
    _quota(box, False)
    _bounds(box, 2, 5)


def test_refused_podip_writes_while_the_list_goes_mark_unmark_mark(box: ClusterBox) -> None:
    pods = [("default", "hs-base-0"), ("default", "hs-base-1"), (QUOTA_NS, "hs-q1"),
            (QUOTA_NS, "hs-q2")]
    with Monitor(box) as mon:
        try:
            for ns, name in pods[:2]:  # pods on the ENI: it is never released whole
                _pod(box, name, ns)
            wait_for(lambda: all(_pod_ip(box, n, ns) for ns, n in pods[:2]), 120, "base pods")
            _quota(box, True)
            mon.check("start")

            # mark: all free IPs but one are listed and acknowledged
            marked = _mark(box)
            mon.check("mark")

            # Two pods whose PodIP creates are refused; one takes the last unlisted IP, the
            # other waits for IPs the next step takes back.
            _pod(box, "hs-q1")
            _pod(box, "hs-q2")
            # unmark: demand is back
            _bounds(box, 4, 6)
            got = wait_for(lambda: all(ips := [_pod_ip(box, n) for _, n in pods[2:]]) and ips,
                           120, "quota pods running")
            mon.check("unmark")
            assert set(got) & marked, (got, marked)  # one holds an IP acknowledged before
            assert not [pi for pi in box.podips() if pi["metadata"]["namespace"] == QUOTA_NS]
            assert "PodIP bind" in box.agent_log(NODE), box.agent_log(NODE)[-2000:]
            # ... and a Warning Event on each pod says why (kubectl describe pod).
            for _, name in pods[2:]:
                ev = wait_for(lambda n=name: _podip_events(box, n), 60, f"Event on {name}")
                assert ev[0]["type"] == "Warning" and "quota" in ev[0]["message"], ev

            # mark again, then let the operator act
            _bounds(box, 0, 0)
            wait_for(lambda: _listed(box), 60, "marked again")
            mon.check("mark again")
            _settle(box, mon, "after release")
            assert set(got) <= _cloud_ips(box)

            # The quota lifted: the PodIPs are written at last.
            _quota(box, False)
            wait_for(lambda: {pi["spec"]["ip"] for pi in box.podips()} >= set(got), 60,
                     "PodIPs written")
            mon.check("quota lifted")
        finally:
            _cleanup(box, pods)
        mon.check("end")


def test_agent_killed_between_acknowledgement_and_unassign(box: ClusterBox) -> None:
    pods = [("default", "hs-base-2"), (QUOTA_NS, "hs-q3"), (QUOTA_NS, "hs-q4")]
    with Monitor(box) as mon:
        try:
            marked = _prepare(box, pods[0][1])
            box.stop_agent(NODE, signal.SIGKILL)
            mon.check("agent killed")
            token = _pool(box)["spec"]["release"][contract.RELEASE_TOKEN]

            # While the agent is dead: pods arrive, the list shrinks then grows again.
            _pod(box, "hs-q3")
            _pod(box, "hs-q4")
            _bounds(box, 4, 6)
            wait_for(lambda: not marked <= _listed(box), 60, "unmarked")
            _bounds(box, 0, 0)
            wait_for(lambda: _pool(box)["spec"]["release"][contract.RELEASE_TOKEN] != token
                     and _listed(box), 60, "a new release request")
            _hold_unassigns(box, False)
            # Nothing may go while no live agent answered this request: what is listed stays
            # in the cloud for longer than the batch wait (an old acknowledgement would act).
            # Checked all along, until a round of the operator after the batch wait.
            listed = _listed(box)
            waited = time.monotonic() + RELEASE_BATCH_WAIT

            def still_listed() -> bool:
                assert listed <= _cloud_ips(box), "released without an acknowledgement"
                return True

            wait_for(lambda: still_listed() and time.monotonic() > waited, 60,
                     "the batch wait")
            rounds = _operator_rounds(box)
            wait_for(lambda: still_listed() and _operator_rounds(box) not in (0, rounds), 150,
                     "an operator round after the batch wait")
            mon.check("agent dead")

            _bounds(box, 2, 5)  # room for the pods that wait
            box.start_agent(NODE)
            got = wait_for(lambda: all(ips := [_pod_ip(box, n) for _, n in pods[1:]]) and ips,
                           120, "quota pods running after the restart")
            mon.check("agent back")
            _settle(box, mon, "after release")
            assert set(got) <= _cloud_ips(box)
        finally:
            if box.node_by_name[NODE].agent is None:
                box.start_agent(NODE)
            _cleanup(box, pods)
        mon.check("end")


def test_api_server_writes_failing_for_a_while(box: ClusterBox) -> None:
    etcd = box.kube.procs["etcd"]
    pods = [("default", "hs-base-3"), (QUOTA_NS, "hs-q5"), (QUOTA_NS, "hs-q6")]
    with Monitor(box) as mon:
        try:
            _prepare(box, pods[0][1])
            _pod(box, "hs-q5")
            _pod(box, "hs-q6")
            _bounds(box, 4, 6)
            got = wait_for(lambda: all(ips := [_pod_ip(box, n) for _, n in pods[1:]]) and ips,
                           120, "quota pods running")
            _bounds(box, 0, 0)
            wait_for(lambda: _listed(box), 60, "marked again")
            # Writes fail (etcd paused) while unassigns are allowed again.
            os.killpg(etcd.pid, signal.SIGSTOP)
            try:
                _hold_unassigns(box, False)
                # Until the operator has seen its own writes fail (its Lease renewal).
                failures = _lease_failures(box)
                wait_for(lambda: _lease_failures(box) > failures, 120,
                         "the operator's writes failing")
            finally:
                os.killpg(etcd.pid, signal.SIGCONT)
            # A replica that could not renew its Lease stops (its Deployment restarts it):
            # restart it here whether or not it has stopped yet.
            box.stop_operator()
            box.start_operator()
            mon.check("writes back")
            _settle(box, mon, "after release")
            assert set(got) <= _cloud_ips(box)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(etcd.pid, signal.SIGCONT)
            _cleanup(box, pods)
        mon.check("end")
