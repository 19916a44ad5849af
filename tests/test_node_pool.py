"""The node pool (pure) and the crash-safe allocation store (real files, flock)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from cni_plugin import contract
from cni_plugin.agent.pool import Pool
from cni_plugin.agent.store import Allocation, AllocationStore, StoreLocked


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rec(ip: str, cid: str = "c") -> Allocation:
    return Allocation(ip=ip, eniId="eni-aaaa1", containerId=cid, ifname="eth0", netns="/x",
                      podNamespace="ns", podName="p", podUID="u", veth="enia", hostNetns="",
                      table=1003, mtu=1500, allocatedAt="", allocatedAtEpoch=0.0)


def test_take_lowest_first_and_never_twice() -> None:
    pool = Pool(cooldown=0)
    pool.set_enis({"eni-a": ["10.0.0.10", "10.0.0.9"], "eni-b": ["10.0.0.100"]})
    got = [pool.take() for _ in range(3)]
    assert got == [("10.0.0.9", "eni-a"), ("10.0.0.10", "eni-a"), ("10.0.0.100", "eni-b")]
    assert pool.take() is None
    assert pool.counts()["allocated"] == 3


def test_cooldown_prefers_rested_ips_then_falls_back_to_oldest() -> None:
    clock = Clock()
    pool = Pool(cooldown=30, clock=clock)
    pool.set_enis({"eni-a": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    a, b, c = (pool.take() for _ in range(3))
    assert a and b and c
    pool.give_back(a[0])
    clock.t += 1
    pool.give_back(b[0])
    assert pool.counts()["cooling"] == 2 and pool.counts()["free"] == 0
    # Nothing rested: the IP that has cooled longest is used rather than failing a pod.
    assert pool.take() == (a[0], "eni-a")
    clock.t += 30
    assert pool.counts()["free"] == 1
    assert pool.take() == (b[0], "eni-a")


def test_release_handshake_acknowledges_only_unheld_ips() -> None:
    pool = Pool(cooldown=0)
    pool.set_enis({"eni-a": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]})
    held = pool.take()
    assert held == ("10.0.0.1", "eni-a")
    pool.set_release(["10.0.0.1", "10.0.0.2"])
    assert pool.acknowledged() == ["10.0.0.2"]  # 10.0.0.1 is held by a pod: never acked
    assert pool.take() == ("10.0.0.3", "eni-a")  # 10.0.0.2 is never handed out while listed
    assert pool.take() is None
    pool.give_back("10.0.0.1")  # the pod leaves: now it can be acknowledged
    assert pool.acknowledged() == ["10.0.0.1", "10.0.0.2"]
    assert pool.take() is None
    pool.set_release(["10.0.0.1"])  # operator dropped 10.0.0.2 without unassigning it
    assert pool.take() == ("10.0.0.2", "eni-a")


def test_ips_of_a_vanished_eni_are_not_handed_out() -> None:
    pool = Pool(cooldown=0)
    pool.set_enis({"eni-a": ["10.0.0.1"], "eni-b": ["10.0.0.2"]})
    pool.set_enis({"eni-b": ["10.0.0.2"]})
    assert pool.take() == ("10.0.0.2", "eni-b")
    assert pool.take() is None


def test_store_claim_is_exclusive_and_survives_reopen(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path)
    store.open()
    assert store.claim(rec("10.0.0.1", "a"))
    assert not store.claim(rec("10.0.0.1", "b"))  # already claimed: never twice
    (store.dir / "10.0.0.9").write_text("{half a rec")  # torn write of an older version
    store.close()
    again = AllocationStore(tmp_path)
    again.open()
    records, broken = again.load()
    assert [r.containerId for r in records] == ["a"]
    assert broken == ["10.0.0.9"]
    assert json.loads((again.dir / "10.0.0.1").read_text())["ip"] == "10.0.0.1"
    again.release("10.0.0.1")
    again.release("10.0.0.1")  # idempotent
    assert again.load() == ([], ["10.0.0.9"])


def _claim_many(path: str, ips: list[str], out: multiprocessing.Queue) -> None:
    store = AllocationStore(Path(path))
    store.dir.mkdir(parents=True, exist_ok=True)
    out.put([ip for ip in ips if store.claim(rec(ip, str(multiprocessing.current_process().pid)))])


def test_store_claims_race_across_processes(tmp_path: Path) -> None:
    ips = [f"10.0.1.{i}" for i in range(1, 60)]
    q: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_claim_many, args=(str(tmp_path), ips, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    won = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    flat = [ip for w in won for ip in w]
    assert sorted(flat) == sorted(ips)  # every IP claimed exactly once


def test_store_lock_excludes_a_second_agent(tmp_path: Path) -> None:
    first = AllocationStore(tmp_path)
    first.open()
    with pytest.raises(StoreLocked, match="another eniway-agent"):
        AllocationStore(tmp_path).open()
    first.close()
    AllocationStore(tmp_path).open()
    assert (tmp_path / contract.STORE_LOCK_FILE).exists()
