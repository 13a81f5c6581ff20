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
# the request surely never reached the server: safe to send again whatever it does
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# made on this side: sending again fails the same way
NEVER_RETRIED = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and jitter.

    Attempt n (0-based) that failed waits `backoff_s * 2**n`, scaled by a random factor in
    [0.5, 1], capped at `max_backoff_s`. A `Retry-After` header from the server is a floor:
    the wait is the larger of it and the backoff, spread over up to a quarter more (clients
    turned away together do not all come back at the same instant), still capped. At most
    `max_retries` retries follow the first attempt.

    A request that is not safe to repeat (`repeatable=False`: it starts a training job, or
    cancels one) is retried only when it surely never reached the server: the connection was
    refused or not made in time. A 429 or 503 answer is retried for every request: the server
    refuses those before acting.

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
        if server_says is None:
            return self._backoff(attempt)
        floor = max(server_says, self._backoff(attempt))
        return min(floor * self.rng.uniform(1.0, 1.25), self.max_backoff_s)

    def delay_for_error(
        self, attempt: int, error: httpx.RequestError, repeatable: bool = True
    ) -> float | None:
        """Seconds to wait before retrying after a request error, or None to give up.

        Connection failures are retried. A read/write/pool timeout is not: the time budget
        is spent, and the server may still be working on the request. Errors made on this side
        (no scheme in the URL, a header value httpx refuses) never succeed: not retried. A
        request not safe to repeat is retried only if it was surely never sent.
        """
        if attempt >= self.max_retries or not isinstance(error, httpx.TransportError):
            return None
        if isinstance(error, NEVER_RETRIED):
            return None
        if not repeatable:
            return self._backoff(attempt) if isinstance(error, NOT_SENT) else None
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
