"""When to retry and how long to wait: pure decisions, shared by the sync and async clients.

The clients own the loop (they differ only in how they sleep); this module answers "retry
after how many seconds, or give up?" for a response or a transport error.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Attempt n (0-based) that failed waits `backoff_s * 2**n`, scaled by a random factor in
    [0.5, 1], capped at `max_backoff_s`; a `Retry-After` header from the server wins over the
    computed wait (still capped). At most `max_retries` retries follow the first attempt.

    Example:
        >>> RetryPolicy(max_retries=0).delay_for_status(0, 503, None) is None
        True
    """

    max_retries: int = 3
    backoff_s: float = 0.25
    max_backoff_s: float = 30.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("max_retries, backoff_s and max_backoff_s must be >= 0")

    def delay_for_status(
        self, attempt: int, status_code: int, retry_after: str | None
    ) -> float | None:
        """Seconds to wait before retrying a response, or None to accept it as final."""
        if status_code not in self.retry_statuses or attempt >= self.max_retries:
            return None
        server_says = parse_retry_after(retry_after)
        if server_says is not None:
            return min(server_says, self.max_backoff_s)
        return self._backoff(attempt)

    def delay_for_error(self, attempt: int, error: httpx.RequestError) -> float | None:
        """Seconds to wait before retrying after a request error, or None to give up.

        Connection failures are retried. A read/write/pool timeout is not: the time budget
        is spent, and the server may still be working on the request.
        """
        if attempt >= self.max_retries or not isinstance(error, httpx.TransportError):
            return None
        timed_out = isinstance(error, httpx.TimeoutException)
        if timed_out and not isinstance(error, httpx.ConnectTimeout):
            return None
        return self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_s * 2.0**attempt, self.max_backoff_s)
        return base * self.rng.uniform(0.5, 1.0)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent or bad.

    Example:
        >>> parse_retry_after("2"), parse_retry_after("soon")
        (2.0, None)
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if seconds == seconds else None  # NaN is not a delay
