"""Retry policy by error type: throttling waits long, server errors retry quickly, and
errors that retrying cannot fix are never retried. Pure (clock and randomness injected)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .base import CloudError, ServerError, Throttled


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: delay in [cap_i/2, cap_i], cap_i = base*2^i."""

    base: float
    cap: float
    max_attempts: int  # total attempts including the first call

    def delay(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.cap, self.base * (2 ** retry))
        return ceiling / 2 + rng.random() * ceiling / 2


@dataclass
class RetryPolicy:
    """Which errors to retry and how long to wait. ``delay`` returns None to give up."""

    throttled: Backoff = Backoff(base=1.0, cap=20.0, max_attempts=6)
    server: Backoff = Backoff(base=0.2, cap=3.0, max_attempts=5)
    rng: random.Random = field(default_factory=random.Random)

    def backoff_for(self, err: BaseException) -> Backoff | None:
        if isinstance(err, Throttled):
            return self.throttled
        if isinstance(err, ServerError):
            return self.server
        return None

    def delay(self, attempt: int, err: BaseException) -> float | None:
        """``attempt`` is the number of calls made so far (1 after the first failure)."""
        if isinstance(err, CloudError) and not err.retryable:
            return None
        b = self.backoff_for(err)
        if b is None or attempt >= b.max_attempts:
            return None
        return b.delay(attempt - 1, self.rng)


NO_RETRY = RetryPolicy(throttled=Backoff(0, 0, 1), server=Backoff(0, 0, 1))
