"""The call loop every SDK-backed provider shares: a per-API token bucket, retries whose
back-off depends on the typed error, and fencing.

Fencing: ``fence`` is called right before every attempt (the first and each retry), after
every wait in the rate limiter or a back-off, and no single sleep lasts longer than
``max_sleep``; so a replica that lost leadership while it waited, or while it was paused,
sends nothing more, and a round in flight stops within ``max_sleep``. A provider only says
how one request is sent and how its SDK's failures map to the errors of base.py
(``_send``); the SDK itself must not retry, or attempts would escape the fence."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .backoff import RetryPolicy
from .base import CloudError, Throttled
from .ratelimit import FALLBACK_RATE, Rate, RateLimiter

log = logging.getLogger(__name__)
T = TypeVar("T")


class CallLoop:
    """Rate limiting, retries, fencing and per-API counts around ``_send``. Thread-safe;
    calls block while their API's bucket is empty."""

    def __init__(self, rates: Mapping[str, Rate] | None = None,
                 retry: RetryPolicy | None = None, limiter_timeout: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep,
                 fence: Callable[[str], None] | None = None, max_sleep: float = 1.0,
                 on_attempt: Callable[[str, str], None] | None = None,
                 default_rates: Mapping[str, Rate] | None = None,
                 fallback_rate: Rate = FALLBACK_RATE) -> None:
        """``default_rates``: the cloud's own figures (None: the ECS defaults), under
        ``rates``, the user's."""
        self.limiter = RateLimiter(rates, fallback=fallback_rate, defaults=default_rates)
        self.retry = retry or RetryPolicy()
        self.limiter_timeout = limiter_timeout
        self._sleep = sleep
        self.fence = fence  # raises to refuse a call (e.g. leadership lost)
        self.max_sleep = max_sleep
        self.on_attempt = on_attempt  # (api, "ok" or the error type) for every request sent
        self._stats_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def _send(self, api: str, fn: Callable[..., T], request: Any) -> T:
        """Sends one request; raises the typed error of base.py for any failure."""
        raise NotImplementedError

    def _acquire(self, api: str) -> None:
        """Wait for the API's token; a bucket still empty after ``limiter_timeout`` means
        the caller is asking for more than the configured rate: it gets Throttled now
        (the retry loop does not wait again)."""
        if not self.limiter.acquire(api, timeout=self.limiter_timeout,
                                    sleep=lambda s: self._pause(api, s)):
            with self._stats_lock:
                self.failures[f"{api}/Throttling.Local"] += 1
            raise Throttled("Throttling.Local", f"local rate limit for {api} still empty "
                            f"after {self.limiter_timeout}s", api=api)

    def _pause(self, api: str, seconds: float) -> None:
        """Sleep in steps of at most ``max_sleep``, asking the fence after each."""
        left = seconds
        while left > 0:
            step = min(left, self.max_sleep)
            self._sleep(step)
            left -= step
            if self.fence is not None:
                self.fence(api)

    def _once(self, api: str, fn: Callable[..., T], request: Any) -> T:
        """One request; every attempt is reported to ``on_attempt``, as the cloud counts."""
        with self._stats_lock:
            self.calls[api] += 1
        try:
            result = self._send(api, fn, request)
        except CloudError as e:
            if self.on_attempt is not None:
                self.on_attempt(api, type(e).__name__)
            raise
        if self.on_attempt is not None:
            self.on_attempt(api, "ok")
        return result

    def _call(self, api: str, fn: Callable[..., T], request: Any,
              done_on_retry: Callable[[CloudError], bool] | None = None) -> T | None:
        """Calls ``fn`` with retries. ``done_on_retry`` says whether an error on a retry
        means an earlier attempt already did the work (its answer was lost); the call
        then returns None."""
        attempt = 0
        while True:
            attempt += 1
            self._acquire(api)
            if self.fence is not None:
                self.fence(api)  # right before sending: nothing goes out once deposed
            try:
                return self._once(api, fn, request)
            except CloudError as err:
                if attempt > 1 and done_on_retry is not None and done_on_retry(err):
                    return None
                delay = self.retry.delay(attempt, err)
                if delay is None:
                    with self._stats_lock:
                        self.failures[f"{api}/{err.code}"] += 1
                    raise
                with self._stats_lock:
                    self.retries[api] += 1
                log.info("%s failed (%s), retry %d in %.2fs", api, err.code, attempt, delay)
                self._pause(api, delay)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._stats_lock:
            return {"calls": dict(self.calls), "retries": dict(self.retries),
                    "failures": dict(self.failures)}
