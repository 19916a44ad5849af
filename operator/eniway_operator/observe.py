"""Shared cloud reads: the describes many node rounds need at once go out as few calls.

ECS describes up to 100 instances (DescribeInstances) or 100 ENIs by id
(DescribeNetworkInterfaces) in one call, and its rate limits count calls, not ids. So a
round does not describe its node itself: it asks the observer for ids, and every id asked
while a call is in flight rides on the next call, which carries up to a page of them.

An answer is never older than the question: a round that has just changed the cloud and
asks again sees its change. Which ids go in the next call is decided by ``next_batch``, a
pure function (oldest question first, a page at most), and when it may go by ``call_at``;
``Batcher`` only does the I/O and the waiting.

A call waits ``linger`` after the oldest question it carries and ``spacing`` after the
previous call started (a full page goes at once): calls come at most every ``spacing``,
well within the API's rate, so the questions of hundreds of rounds (a scale-out) share
a few calls instead of each drawing a token, and the bucket keeps room for the calls
that are not batched.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from eniway_operator.cloud.base import (
    CloudError,
    CloudProvider,
    InstanceInfo,
    NetworkInterface,
    NotFound,
)

K = TypeVar("K")
V = TypeVar("V")

PAGE = 100  # ids per DescribeInstances / DescribeNetworkInterfaces call


LINGER = 0.05  # seconds a question waits for others to join its call
SPACING = 0.25  # seconds between the starts of two calls of one kind (4 a second at most)


def next_batch(pending: Sequence[K], size: int = PAGE) -> list[K]:
    """The ids the next call carries: the longest-waiting first, at most ``size``."""
    return list(pending[:max(size, 1)])


def call_at(oldest_asked: float, last_start: float, pending: int, size: int = PAGE,
            linger: float = LINGER, spacing: float = SPACING) -> float:
    """When the next call may start: ``linger`` after its oldest question and ``spacing``
    after the previous call; at once when a page is full (waiting would only add calls)."""
    if pending >= size:
        return last_start
    return max(oldest_asked + linger, last_start + spacing)


@dataclass(frozen=True)
class _Answer(Generic[V]):
    call: int  # the number of the call that answered (calls are numbered as they start)
    value: V | None  # None: the cloud has no such object
    error: CloudError | None = None


class Batcher(Generic[K, V]):
    """Answers ``get(ids)`` from calls of ``fetch`` that started after the question, one
    call at a time, each carrying every id then waiting (a page at most)."""

    def __init__(self, fetch: Callable[[list[K]], Mapping[K, V]], size: int = PAGE,
                 linger: float = LINGER, spacing: float = SPACING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._size = size
        self._linger, self._spacing, self._clock = linger, spacing, clock
        self._last_start = -1e9
        self._cond = threading.Condition()
        self._pending: dict[K, float] = {}  # ordered: oldest question first; asked at
        self._inflight: set[K] = set()
        self._answers: dict[K, _Answer[V]] = {}
        self._started = 0  # calls started so far
        self._busy = False
        self.calls = 0  # fetch calls made (for tests and figures)

    def get(self, ids: Iterable[K]) -> dict[K, V]:
        """The objects of ``ids`` the cloud has (an absent id has none). A cloud error of
        the call that carried one of them is raised here."""
        want = list(dict.fromkeys(ids))
        if not want:
            return {}
        got: dict[K, V] = {}
        with self._cond:
            asked_at = self._started
            for k in want:
                self._pending.setdefault(k, self._clock())
            while True:
                missing = []
                for k in want:
                    a = self._answers.get(k)
                    if a is not None and a.call > asked_at:
                        if a.error is not None:
                            raise a.error
                        if a.value is not None:
                            got[k] = a.value
                    else:
                        missing.append(k)
                        if k not in self._pending and k not in self._inflight:
                            # its answer was dropped: ask again
                            self._pending[k] = self._clock()
                if not missing:
                    return got
                if self._busy:
                    self._cond.wait()
                    continue
                start = call_at(next(iter(self._pending.values())), self._last_start,
                                len(self._pending), self._size, self._linger, self._spacing)
                if start > self._clock():  # others may join meanwhile (or start it)
                    self._cond.wait(start - self._clock())
                    continue
                batch = next_batch(list(self._pending), self._size)
                for k in batch:
                    del self._pending[k]
                self._inflight = set(batch)
                self._busy = True
                self._last_start = self._clock()
                self._started += 1
                call = self._started
                answers: dict[K, _Answer[V]] = {}
                self._cond.release()
                try:
                    answers = self._call(batch, call)
                finally:
                    self._cond.acquire()
                    self._answers.update(answers)
                    self._busy = False
                    self._inflight = set()
                    self._forget_old()
                    self._cond.notify_all()

    def _call(self, batch: list[K], call: int) -> dict[K, _Answer[V]]:
        self.calls += 1
        try:
            found = self._fetch(batch)
        except CloudError as e:
            return {k: _Answer(call, None, e) for k in batch}
        return {k: _Answer(call, found.get(k)) for k in batch}

    def _forget_old(self) -> None:
        """Answers every waiter has had the chance to read go (a waiter that missed one
        asks again)."""
        if len(self._answers) > 4 * PAGE * 10:
            keep = self._started - 10
            self._answers = {k: a for k, a in self._answers.items() if a.call > keep}


class Observer:
    """The operator's batched reads of instances and ENIs by id."""

    def __init__(self, cloud: CloudProvider) -> None:
        self.cloud = cloud
        self.instances: Batcher[str, InstanceInfo] = Batcher(self._instances)
        self.enis: Batcher[str, NetworkInterface] = Batcher(self._enis)

    def instance(self, instance_id: str) -> InstanceInfo:
        found = self.instances.get([instance_id]).get(instance_id)
        if found is None:
            raise NotFound("InvalidInstanceId.NotFound", f"instance {instance_id} not found",
                           api="DescribeInstances")
        return found

    def _instances(self, ids: list[str]) -> dict[str, InstanceInfo]:
        return {i.instance_id: i for i in self.cloud.describe_instances(ids)}

    def _enis(self, ids: list[str]) -> dict[str, NetworkInterface]:
        try:
            return {e.eni_id: e for e in self.cloud.describe_enis(eni_ids=ids)}
        except NotFound:
            if len(ids) == 1:
                return {}
        out: dict[str, NetworkInterface] = {}  # one unknown id spoiled the page: one by one
        for eni_id in ids:
            with contextlib.suppress(NotFound):
                out.update((e.eni_id, e) for e in self.cloud.describe_enis(eni_ids=[eni_id]))
        return out

