"""When each node is reconciled: on events (debounced), on the delay the last round asked
for, never two rounds of one node at once. Runs on kopf's event loop; the rounds run in a
thread pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from eniway_operator.leader import NotLeader
from eniway_operator.metrics import Health
from eniway_operator.reconcile import Demand, Reconciler

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, reconciler: Reconciler, demand: Callable[[str], Demand],
                 health: Health, workers: int = 8,
                 on_not_leader: Callable[[], None] | None = None) -> None:
        self.reconciler = reconciler
        self.demand = demand
        self.health = health
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="poll-moving")
        self.due: dict[str, float] = {}
        self.running: set[str] = set()
        self.again: set[str] = set()
        self.errors: dict[str, int] = {}
        self.on_not_leader = on_not_leader
        self._wakeup: asyncio.Event | None = None
        self._stopping = False

    def poke(self, node: str, delay: float = 0.0) -> None:
        """Reconcile ``node`` in ``delay`` seconds (or sooner if already due sooner).
        Must be called on the event loop."""
        if not node or self._stopping:
            return
        if node in self.running:
            if delay <= 1.0:
                self.again.add(node)
            return
        due = time.monotonic() + delay
        if node not in self.due or due < self.due[node]:
            self.due[node] = due
            if self._wakeup is not None:
                self._wakeup.set()

    async def poll_moving(self) -> None:
        """Every ``poll`` seconds, one shared describe of the ENIs attaching or detaching on
        any node (in a thread of its own, not a round's worker); the nodes whose ENIs
        settled are reconciled at once."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                settled = await loop.run_in_executor(self._poller,
                                                     self.reconciler.poll_moving)
            except NotLeader as e:
                log.error("%s", e)
                if self.on_not_leader:
                    self.on_not_leader()
                return
            except Exception as e:  # the fallback delay of each round still applies
                log.warning("polling moving ENIs: %s", e)
                settled = set()
            for node in settled:
                self.poke(node)
            await asyncio.sleep(self.reconciler.settings.poll)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup = asyncio.Event()
        poller = asyncio.create_task(self.poll_moving(), name="poll-moving")
        try:
            await self._run(loop, wakeup)
        finally:
            poller.cancel()

    async def _run(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        while not self._stopping:
            self.health.beat()
            now = time.monotonic()
            for node, due in sorted(self.due.items(), key=lambda kv: kv[1]):
                if due <= now and node not in self.running:
                    del self.due[node]
                    self.running.add(node)
                    fut = loop.run_in_executor(self.pool, self.reconciler.reconcile, node,
                                               self.demand(node))
                    fut.add_done_callback(partial(self._done, node))
            nxt = min(self.due.values(), default=now + 1.0)
            wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(),
                                       timeout=max(0.01, min(1.0, nxt - now)))

    def _done(self, node: str, fut: asyncio.Future[float | None]) -> None:
        self.running.discard(node)
        delay: float | None
        try:
            delay = fut.result()
            self.errors.pop(node, None)
        except NotLeader as e:
            log.error("%s", e)
            if self.on_not_leader:
                self.on_not_leader()
            return
        except Exception as e:
            n = self.errors[node] = self.errors.get(node, 0) + 1
            delay = min(2.0 ** n, 120.0)
            log.exception("node %s: reconcile failed (%s); again in %.0fs", node, e, delay)
        if node in self.again:
            self.again.discard(node)
            delay = 0.0 if delay is None else min(delay, 0.2)
        if delay is not None:
            self.poke(node, delay)

    def stop(self) -> None:
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self._poller.shutdown(wait=True, cancel_futures=True)
