"""Token buckets: one per cloud API, so a burst of one call type cannot starve the others.

Pure logic with an injectable clock, so tests never sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Rate:
    """``per_minute`` tokens refill evenly over a minute; ``burst`` is the bucket size."""

    per_minute: float
    burst: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


class TokenBucket:
    """A classic token bucket. ``try_take`` never blocks; ``wait_time`` says how long until
    ``n`` tokens are there; ``take`` blocks (bounded by ``timeout``)."""

    def __init__(self, rate: Rate, clock: Clock = time.monotonic) -> None:
        if rate.per_minute <= 0 or rate.burst <= 0:
            raise ValueError(f"invalid rate {rate}")
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate.burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.rate.burst), self._tokens + elapsed * self.rate.per_second)

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def try_take(self, n: int = 1) -> bool:
        with self._lock:
            self._refill()
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False

    def wait_time(self, n: int = 1) -> float:
        """Seconds until ``n`` tokens are available (0 when they already are)."""
        with self._lock:
            self._refill()
            missing = n - self._tokens
            return 0.0 if missing <= 0 else missing / self.rate.per_second

    def take(self, n: int = 1, timeout: float | None = None,
             sleep: Callable[[float], None] = time.sleep) -> bool:
        """Block until ``n`` tokens are taken; False if that would exceed ``timeout``."""
        deadline = None if timeout is None else self._clock() + timeout
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= n:
                    self._tokens -= n
                    return True
                wait = (n - self._tokens) / self.rate.per_second
            if deadline is not None and self._clock() + wait > deadline:
                return False
            sleep(wait)


# Terway's defaults for the calls it names (its aliyun client); the rest are ours.
DEFAULT_RATES: dict[str, Rate] = {
    "AssignPrivateIpAddresses": Rate(400, 10),
    "UnassignPrivateIpAddresses": Rate(400, 10),
    "CreateNetworkInterface": Rate(500, 10),
    "AttachNetworkInterface": Rate(500, 10),
    "DetachNetworkInterface": Rate(500, 10),
    "DeleteNetworkInterface": Rate(500, 10),
    "ModifyNetworkInterfaceAttribute": Rate(500, 10),
    "DescribeNetworkInterfaces": Rate(800, 10),
    "DescribeInstances": Rate(800, 10),
    "DescribeInstanceTypes": Rate(800, 10),
    "DescribeVSwitches": Rate(800, 10),
    "DescribeSecurityGroups": Rate(800, 10),
}
FALLBACK_RATE = Rate(300, 10)


class RateLimiter:
    """Per-API buckets: ``rates`` over ``defaults`` (None: DEFAULT_RATES, ECS's); APIs
    without an entry get ``fallback`` (one bucket each)."""

    def __init__(self, rates: Mapping[str, Rate] | None = None, clock: Clock = time.monotonic,
                 fallback: Rate = FALLBACK_RATE,
                 defaults: Mapping[str, Rate] | None = None) -> None:
        merged = dict(DEFAULT_RATES if defaults is None else defaults)
        merged.update(rates or {})
        self._clock = clock
        self._fallback = fallback
        self._buckets = {api: TokenBucket(r, clock) for api, r in merged.items()}
        self._lock = threading.Lock()

    def bucket(self, api: str) -> TokenBucket:
        with self._lock:
            b = self._buckets.get(api)
            if b is None:
                b = self._buckets[api] = TokenBucket(self._fallback, self._clock)
            return b

    def acquire(self, api: str, timeout: float | None = None,
                sleep: Callable[[float], None] = time.sleep) -> bool:
        return self.bucket(api).take(1, timeout=timeout, sleep=sleep)


UNITS = {"": 1.0, "min": 1.0, "m": 1.0, "s": 60.0, "sec": 60.0, "h": 1 / 60.0}


def parse_rates(spec: Mapping[str, object]) -> dict[str, Rate]:
    """``{"AssignPrivateIpAddresses": "400/min", "X": "5/s", "Y": {"perMinute": 60, "burst": 5}}``;
    a bare number is per minute. A bad entry is a ValueError naming the API."""
    out: dict[str, Rate] = {}
    for api, value in spec.items():
        try:
            if isinstance(value, Mapping):
                unknown = set(value) - {"perMinute", "per_minute", "burst"}
                if unknown:
                    raise ValueError(f"unknown keys {sorted(unknown)}")
                per_minute = float(value.get("perMinute", value.get("per_minute", 0)))
                burst = int(value.get("burst", 10))
            else:
                num, _, unit = str(value).strip().partition("/")
                if unit.strip() not in UNITS:
                    raise ValueError(f"unit {unit!r} is not one of /s, /min, /h")
                per_minute = float(num) * UNITS[unit.strip()]
                burst = 10
            if per_minute <= 0 or burst < 1:
                raise ValueError("the rate and the burst must be > 0")
        except (TypeError, ValueError) as e:
            raise ValueError(f"rate for {api}: {value!r}: {e}") from None
        out[api] = Rate(per_minute, burst)
    return out
