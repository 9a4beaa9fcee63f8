"""Where the adaptive-intensity state lives: one small interface, two backends, one registry.

- ``memory`` (the embedded default): the per-process table of :mod:`adaptive`. Each Triton
  python-backend instance is its own process, so this state splits across instances and replicas;
  the repository spec refuses more than one ``mia_defense`` instance with it.
- ``redis`` (:mod:`redis_state`): per-client rate, near-duplicate signatures and the shared churn
  and unattributed state live in one Redis server that every instance and replica uses, one round
  trip per dynamic batch, so a client's threat is the same whichever instance or replica serves it.

Both compute the same threats for the same traffic (``tests/python_backend/test_threat_state.py``).
A store that does not answer never fails a request and never lowers protection: ``observe``
returns :data:`FALLBACK_THREAT` for every row (the most protective operating point: label-only-level
outputs) and says so, so the adapter can count it and report degraded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from veil.python_backend.adaptive import AdaptiveConfig, ThreatTracker

FALLBACK_THREAT = 1.0
"""The threat served while the state store is unreachable: the most protective operating point."""


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    backend: str = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    """Redis only; the ``VEIL_STATE_URL`` environment variable overrides the repository's value."""
    timeout_s: float = 0.05
    """Redis socket connect and read timeout: past it a batch is served at the fallback threat."""
    key_prefix: str = "veil:"
    max_backoff_s: float = 2.0
    """After a failure the store is retried after 0.1 s, doubling up to this (reconnect with backoff)."""


@dataclass
class Observed:
    threats: list[float]
    """One threat per request of the batch, in order."""
    fallback: bool = False
    """The store did not answer: every threat is :data:`FALLBACK_THREAT`."""


class ThreatState(Protocol):
    shared: bool
    """True when every process sees the same state (several instances and replicas are safe)."""

    def observe(
        self, batch: Sequence[tuple[str, np.ndarray]], *, now: float | None = None, row_cost_s: float = 0.0
    ) -> Observed:
        """Fold a dynamic batch of requests, ``(client id, [n, SIGNATURE_SIZE] signatures)`` each,
        into the state in order; their threats. ``now`` (seconds) defaults to the backend's clock;
        ``row_cost_s`` is the calling step's seconds per row (:class:`~veil.python_backend.adaptive.ServiceCost`)."""
        ...

    def tracked(self) -> int:
        """Clients with state (for the metrics; may be an estimate)."""
        ...

    def memory_bytes(self) -> int: ...

    def problem(self) -> str | None:
        """None while the store answers, else why the defense serves the fallback threat."""
        ...

    def close(self) -> None: ...


REGISTRY: dict[str, Callable[..., ThreatState]] = {}


def register(name: str) -> Callable[[Callable[..., ThreatState]], Callable[..., ThreatState]]:
    def add(factory: Callable[..., ThreatState]) -> Callable[..., ThreatState]:
        REGISTRY[name] = factory
        return factory

    return add


BACKENDS = ("memory", "redis")


def make_state(
    *, config: StateConfig, adaptive: AdaptiveConfig, clock: Callable[[], float] = time.monotonic
) -> ThreatState:
    if config.backend == "redis":
        import veil.python_backend.redis_state  # noqa: F401 - registers itself
    factory = REGISTRY.get(config.backend)
    if factory is None:
        raise ValueError(f"unknown state backend {config.backend!r}; choose from {BACKENDS}")
    return factory(config=config, adaptive=adaptive, clock=clock)


@register("memory")
class MemoryState:
    """The per-process table (:class:`ThreatTracker`): fast, lost on restart, one per process."""

    shared = False

    def __init__(
        self, *, config: StateConfig, adaptive: AdaptiveConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.tracker = ThreatTracker(adaptive, clock=clock)

    def observe(
        self, batch: Sequence[tuple[str, np.ndarray]], *, now: float | None = None, row_cost_s: float = 0.0
    ) -> Observed:
        now = self.tracker.clock() if now is None else now
        return Observed(
            [self.tracker.observe(client, None, sig, now=now, row_cost_s=row_cost_s) for client, sig in batch]
        )

    def tracked(self) -> int:
        return len(self.tracker)

    def memory_bytes(self) -> int:
        return self.tracker.memory_bytes()

    def problem(self) -> str | None:
        return None

    def close(self) -> None:
        pass
