"""Per-principal limits: rows per second (a token bucket) and requests in flight, per API key.

The gateway-wide caps of :class:`veil.serving.policy.Limits` protect the host; these protect
callers from each other. A caller meeting one is told when to come back (``Retry-After``, in whole
seconds: HTTP header, gRPC trailing metadata ``retry-after``). Pure (no I/O), and used from the
gateway's event loop only, so no locks; the clock is injectable for tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from veil.serving.validation import CallerError

RETRY_AFTER = "retry-after"
"""gRPC trailing-metadata key (HTTP: the ``Retry-After`` header) with the seconds to wait."""


@dataclass(frozen=True)
class Quota:
    """What one principal may use. ``rows_per_s`` 0 means unlimited rows."""

    rows_per_s: float = 100.0
    """Rows (texts) per second, sustained."""
    burst: int = 512
    """Rows that may arrive at once after a quiet spell (at least the largest batch, 256)."""
    concurrent: int = 8
    """Requests in flight at once."""
    max_sub_ids: int = 0
    """Distinct caller-chosen client ids (``veil-client-id``) this principal may use, each its own
    adaptive state (``principal/sub``); 0: caller ids are ignored, the principal is one state."""

    def __post_init__(self) -> None:
        if self.rows_per_s < 0 or self.burst < 1 or self.concurrent < 1 or self.max_sub_ids < 0:
            raise ValueError(f"invalid quota {self}: rows_per_s >= 0, burst >= 1, concurrent >= 1, max_sub_ids >= 0")


class RateLimited(CallerError):
    """429 / RESOURCE_EXHAUSTED with the seconds to wait."""

    def __init__(self, message: str, *, retry_after: float, reason: str) -> None:
        super().__init__(message, status=429, reason=reason)
        self.retry_after = max(1, math.ceil(retry_after))


class TokenBucket:
    """``rate`` tokens a second up to ``capacity``; a request takes as many tokens as it has rows."""

    def __init__(self, *, rate: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.tokens = float(capacity)
        self.stamp = clock()

    def configure(self, *, rate: float, capacity: int) -> None:
        """New limits (a reloaded key file) keep the tokens already earned, up to the new capacity."""
        self._refill()
        self.rate, self.capacity = rate, capacity
        self.tokens = min(self.tokens, float(capacity))

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.capacity), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: int) -> float:
        """Take ``n`` tokens and return 0, or take nothing and return the seconds until ``n`` are there."""
        self._refill()
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class RowLimiter:
    """One :class:`TokenBucket` per principal (two keys of one principal share it: rotating a key
    does not double the quota)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, principal: str, rows: int, quota: Quota) -> None:
        """Raise :class:`RateLimited` (or 413 for a batch no wait can admit) unless ``rows`` fit."""
        if not quota.rows_per_s:
            return
        if rows > quota.burst:
            raise CallerError(
                f"a request of {rows} rows is over this key's burst of {quota.burst} rows; send smaller batches",
                status=413,
            )
        bucket = self.buckets.get(principal)
        if bucket is None:
            bucket = TokenBucket(rate=quota.rows_per_s, capacity=quota.burst, clock=self.clock)
            self.buckets[principal] = bucket
        elif (bucket.rate, bucket.capacity) != (quota.rows_per_s, quota.burst):
            bucket.configure(rate=quota.rows_per_s, capacity=quota.burst)
        wait = bucket.take(rows)
        if wait:
            raise RateLimited(
                f"rate limit: this key may send {quota.rows_per_s:g} rows per second (bursts of {quota.burst});"
                f" retry in {max(1, math.ceil(wait))}s",
                retry_after=wait,
                reason="rate-limited",
            )

    def forget(self, keep: set[str]) -> None:
        """Drop the buckets of principals no longer in the key file."""
        for principal in set(self.buckets) - keep:
            del self.buckets[principal]


def http_rows(doc: dict) -> int:
    """Rows of a checked KServe v2 JSON request: the largest batch dimension of its inputs."""
    return max((int(i["shape"][0]) for i in doc.get("inputs", ()) if i.get("shape")), default=1)


def grpc_rows(request) -> int:
    """Rows of a checked ``ModelInferRequest``."""
    return max((int(t.shape[0]) for t in request.inputs if len(t.shape)), default=1)
