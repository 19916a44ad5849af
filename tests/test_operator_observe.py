"""The shared observer: many nodes' describes ride on few calls (ids batched, a page at
most), every answer comes from a call started after the question, and a cloud error
reaches each asker. Against eniway-cloudsim through the official SDK."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from eniway_operator.cloud.backoff import NO_RETRY
from eniway_operator.cloud.base import NotFound, Throttled
from eniway_operator.observe import PAGE, Batcher, Observer, call_at, next_batch

ZONE = "cn-hangzhou-i"


@pytest.mark.parametrize(("pending", "size", "want"), [
    ([], 100, []),
    (["a", "b", "c"], 100, ["a", "b", "c"]),
    ([f"i{n}" for n in range(250)], 100, [f"i{n}" for n in range(100)]),
    (["x", "y"], 1, ["x"]),
    (["x", "y"], 0, ["x"]),  # never an empty call while ids wait
])
def test_next_batch_oldest_first_a_page_at_most(pending: list[str], size: int,
                                                 want: list[str]) -> None:
    assert next_batch(pending, size) == want


@pytest.mark.parametrize(("asked", "last", "pending", "want"), [
    (10.0, -1e9, 1, 10.05),  # the first call waits for others to join it
    (10.0, 9.9, 1, 10.15),  # and a call follows the previous one by the spacing
    (10.0, 9.0, 3, 10.05),
    (10.0, 9.9, PAGE, 9.9),  # a full page goes at once
    (10.0, 9.9, PAGE + 7, 9.9),
])
def test_call_at_lingers_spaces_and_sends_a_full_page_at_once(
        asked: float, last: float, pending: int, want: float) -> None:
    assert call_at(asked, last, pending, PAGE, linger=0.05, spacing=0.25) == \
        pytest.approx(want)


def test_a_full_page_goes_without_lingering() -> None:
    """Two askers fill a page of 2: one call carries both, long before the linger."""
    calls: list[list[str]] = []

    def fetch(keys: list[str]) -> dict[str, str]:
        calls.append(sorted(keys))
        return {k: k.upper() for k in keys}

    b: Batcher[str, str] = Batcher(fetch, size=2, linger=600.0, spacing=600.0)
    got = _ask_together(2, lambda k: b.get([f"id{k}"]))
    assert got == [{"id0": "ID0"}, {"id1": "ID1"}]
    assert calls == [["id0", "id1"]]


def _instances(sim: Any, n: int) -> list[str]:
    topo = sim.admin.bootstrap({ZONE: ["10.0.0.0/16"]})
    return [sim.admin.create_instance("ecs.g6.large", topo.vswitch_ids(ZONE)[0],
                                      [topo.security_group_id])["instance_id"]
            for _ in range(n)]


def _ask_together(n: int, ask: Any) -> list[Any]:
    """n threads released at once, each asking for its own id."""
    start = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(k: int) -> None:
        start.wait()
        try:
            out[k] = ask(k)
        except Exception as e:  # the test reads it
            out[k] = e

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_many_nodes_instances_in_few_calls(cloudsim: Any) -> None:
    ids = _instances(cloudsim, 40)
    obs = Observer(cloudsim.provider())
    cloudsim.admin.reset_call_counts()
    got = _ask_together(40, lambda k: obs.instance(ids[k]))
    assert [g.instance_id for g in got] == ids
    calls = cloudsim.admin.call_counts()["calls"]["DescribeInstances"]
    # one call per wave of askers, not one each
    assert calls == obs.instances.calls
    assert calls <= 5, calls
    # the primary ENI is listed with the instance: a node's refresh needs no listing of it
    assert all(g.primary_eni_id and g.primary_eni_id in g.eni_ids for g in got)


def test_missing_ids_are_absent_and_pages_hold_100(cloudsim: Any) -> None:
    ids = _instances(cloudsim, 3)
    obs = Observer(cloudsim.provider())
    with pytest.raises(NotFound):
        obs.instance("i-doesnotexist")
    wanted = [*ids, *[f"i-none{n:03d}" for n in range(PAGE + 20)]]
    cloudsim.admin.reset_call_counts()
    got = obs.instances.get(wanted)
    assert sorted(got) == sorted(ids)
    assert cloudsim.admin.call_counts()["calls"]["DescribeInstances"] == 2  # 123 ids: 2 pages
    primaries = [obs.instance(i).primary_eni_id for i in ids]
    enis = obs.enis.get([*primaries, "eni-doesnotexist"])
    assert sorted(enis) == sorted(primaries)


def test_answer_is_never_older_than_the_question(cloudsim: Any) -> None:
    ids = _instances(cloudsim, 1)
    obs = Observer(cloudsim.provider())
    assert obs.instance(ids[0]).status == "Running"
    cloudsim.admin.stop(ids[0])
    assert obs.instance(ids[0]).status == "Stopped"  # asked again: a new call


def test_a_cloud_error_reaches_every_asker_and_the_next_call_recovers(cloudsim: Any) -> None:
    ids = _instances(cloudsim, 6)
    obs = Observer(cloudsim.provider(retry=NO_RETRY))
    cloudsim.admin.set_throttle("DescribeInstances", 0.001, burst=1)
    obs.instance(ids[0])  # the only token
    got = _ask_together(6, lambda k: obs.instance(ids[k]))
    assert all(isinstance(g, Throttled) for g in got), got
    cloudsim.admin.set_throttle("DescribeInstances", None)
    assert obs.instance(ids[5]).instance_id == ids[5]


def test_batcher_asks_again_for_an_id_whose_call_failed_unexpectedly() -> None:
    fail = {"first": True}

    def fetch(keys: list[str]) -> dict[str, str]:
        if fail.pop("first", False):
            raise RuntimeError("lost")
        return {k: k.upper() for k in keys}

    b: Batcher[str, str] = Batcher(fetch)
    with pytest.raises(RuntimeError):
        b.get(["a"])
    assert b.get(["a", "b"]) == {"a": "A", "b": "B"}


def test_provider_describes_enis_by_id_100_a_call_and_lists_by_tag_in_pages(
        cloudsim: Any) -> None:
    """What the observer relies on, against the emulator's documented limits: ids go 100
    to a call (the API refuses more), and a listing by tag follows NextToken to the end."""
    topo = cloudsim.admin.bootstrap({ZONE: ["10.0.0.0/16"]})
    cloudsim.admin.set_quota(2 * PAGE)
    provider = cloudsim.provider()
    tags = {"eniway.io/test": "paging"}
    made = [provider.create_eni(topo.vswitch_ids(ZONE)[0], [topo.security_group_id], tags)
            for _ in range(PAGE + 30)]
    ids = [e.eni_id for e in made]
    cloudsim.admin.reset_call_counts()
    got = provider.describe_enis(eni_ids=ids)
    assert sorted(e.eni_id for e in got) == sorted(ids)
    assert cloudsim.admin.call_counts()["calls"]["DescribeNetworkInterfaces"] == 2
    cloudsim.admin.reset_call_counts()
    listed = provider.describe_enis(tags=tags)
    assert sorted(e.eni_id for e in listed) == sorted(ids)
    # pages of 100 (MaxResults): 130 ENIs take two calls
    assert cloudsim.admin.call_counts()["calls"]["DescribeNetworkInterfaces"] == 2
    obs = Observer(provider)
    cloudsim.admin.reset_call_counts()
    got_ids = _ask_together(len(ids), lambda k: obs.enis.get([ids[k]]))
    assert all(g == {ids[k]: g[ids[k]]} for k, g in enumerate(got_ids)), got_ids[:3]
    # 130 askers at once: a page and the rest (a late asker may need one more)
    assert cloudsim.admin.call_counts()["calls"]["DescribeNetworkInterfaces"] <= 4
