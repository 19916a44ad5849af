"""Fault injection and per-API throttling in front of the ECS actions, plus call counters
(in total and per caller: the AccessKey that signed the request)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .engine import EcsError

ANY = "*"


@dataclass(frozen=True)
class Rate:
    """What the region allows one API: ``per_second`` refill, ``burst`` bucket size."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_second > 0 or self.burst < 1:
            raise ValueError(f"a rate needs per_second > 0 and burst >= 1, not {self}")


class Bucket:
    """The region's side of throttling: a token bucket that never waits, it only says
    whether this call gets through (the caller answers Throttling otherwise)."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate.burst)
        self._stamp = clock()

    def admit(self) -> bool:
        now = self._clock()
        self._tokens = min(float(self.rate.burst),
                           self._tokens + max(0.0, now - self._stamp) * self.rate.per_second)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass
class Fault:
    """An injected failure. ``error_rate`` fails that share of calls at random (seeded);
    ``count`` fails the next N calls for sure. ``phase`` "before" refuses the call,
    "after" performs it and then answers with the error (a lost response: what a client
    token is for). ``latency_ms`` (+ up to ``jitter_ms``) delays every call."""

    error_rate: float = 0.0
    count: int = 0
    code: str = "InternalError"
    status: int = 500
    message: str = "The request processing has failed due to some unknown error."
    phase: str = "before"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fault:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        f = cls(**known)
        if f.phase not in ("before", "after"):
            raise ValueError(f"phase must be before or after, not {f.phase!r}")
        if not 0.0 <= f.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        return f


@dataclass
class Decision:
    delay: float = 0.0
    error: EcsError | None = None
    phase: str = "before"


class Gate:
    """Decides, per call, the delay and the injected error; thread-safe."""

    def __init__(self, seed: int | None = None, throttle: Mapping[str, Rate] | None = None
                 ) -> None:
        self._lock = threading.Lock()
        self.faults: dict[str, Fault] = {}
        self.rng = random.Random(seed)
        self.throttle_rates: dict[str, Rate] = dict(throttle or {})
        self._buckets: dict[str, Bucket] = {}
        self.calls: Counter[str] = Counter()
        self.errors: dict[str, Counter[str]] = defaultdict(Counter)
        self.by_caller: dict[str, Counter[str]] = defaultdict(Counter)

    def set_faults(self, faults: Mapping[str, Mapping[str, Any]], seed: int | None = None,
                   replace: bool = True) -> None:
        parsed = {api: Fault.from_dict(spec) for api, spec in faults.items()}
        with self._lock:
            if replace:
                self.faults = parsed
            else:
                self.faults.update(parsed)
            if seed is not None:
                self.rng = random.Random(seed)

    def set_throttle(self, rates: Mapping[str, Rate | None]) -> None:
        with self._lock:
            for api, rate in rates.items():
                if rate is None:
                    self.throttle_rates.pop(api, None)
                else:
                    self.throttle_rates[api] = rate
            self._buckets.clear()

    def _bucket(self, api: str) -> Bucket | None:
        rate = self.throttle_rates.get(api) or self.throttle_rates.get(ANY)
        if rate is None:
            return None
        b = self._buckets.get(api)
        if b is None:
            b = self._buckets[api] = Bucket(rate)
        return b

    def decide(self, api: str, caller: str = "", bucket: str = "",
               throttled: EcsError | None = None) -> Decision:
        """``caller`` is the AccessKey id that signed the request (counted apart);
        ``bucket`` the token bucket the call draws from (default: the API's own);
        ``throttled`` the error an empty bucket answers (default: ECS's Throttling)."""
        with self._lock:
            self.calls[api] += 1
            self.by_caller[caller][api] += 1
            tokens = self._bucket(bucket or api)
            if tokens is not None and not tokens.admit():
                error = throttled or EcsError(400, "Throttling",
                                              "Request was denied due to request throttling.")
                self.errors[api][error.code] += 1
                return Decision(error=error)
            fault = self.faults.get(api) or self.faults.get(ANY)
            if fault is None:
                return Decision()
            delay = (fault.latency_ms + self.rng.random() * fault.jitter_ms) / 1000.0
            fail = False
            if fault.count > 0:
                fault.count -= 1
                fail = True
            elif fault.error_rate > 0 and self.rng.random() < fault.error_rate:
                fail = True
            if not fail:
                return Decision(delay=delay)
            self.errors[api][fault.code] += 1
            return Decision(delay=delay, error=EcsError(fault.status, fault.code, fault.message),
                            phase=fault.phase)

    def record_error(self, api: str, code: str) -> None:
        with self._lock:
            self.errors[api][code] += 1

    def counts(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": dict(self.calls), "total": sum(self.calls.values()),
                    "errors": {k: dict(v) for k, v in self.errors.items() if v},
                    "callers": {k: dict(v) for k, v in self.by_caller.items() if v}}

    def reset_counts(self) -> None:
        with self._lock:
            self.calls.clear()
            self.errors.clear()
            self.by_caller.clear()

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"faults": {k: asdict(v) for k, v in self.faults.items()},
                    "throttle": {k: {"per_second": r.per_second, "burst": r.burst}
                                 for k, r in self.throttle_rates.items()}}
