"""Keeping tritonserver serving: the watch loop both command lines run, and the restart rules.

One loop for ``veil-serve`` (tritonserver alone) and the production gateway, so a rule about
restarting is written once. It must not die of anything but a deliberate give-up: an earlier loop
only caught ``ServerError``, so ``OSError: Too many open files`` from a psutil call under a
connection flood ended the gateway and, in its ``finally``, tritonserver.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from veil.serving.launcher import Health, ServerError, TritonServer

log = logging.getLogger(__name__)
FD_TARGET = 65536


def raise_fd_limit(target: int = FD_TARGET) -> tuple[int, int]:
    """Raise the soft open-file limit towards ``target`` (never above the hard limit); returns
    (soft, hard) afterwards. A common soft limit of 1024 is far too low for a front door."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class RestartBudget:
    """At most ``max_restarts`` within any ``window_s`` seconds (a server that keeps dying is
    broken; one that died once a day is not), each restart at least an exponential backoff after
    the previous one (``backoff_s`` doubling per recent restart, up to ``max_backoff_s``)."""

    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    times: deque[float] = field(default_factory=deque)

    def _recent(self, now: float) -> int:
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        return len(self.times)

    def spent(self, now: float) -> bool:
        return self._recent(now) >= self.max_restarts

    def wait(self, now: float) -> float:
        """Seconds until the next restart may start (0: now)."""
        recent = self._recent(now)
        if not recent:
            return 0.0
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (recent - 1))
        return max(0.0, self.times[-1] + backoff - now)

    def record(self, now: float) -> None:
        self.times.append(now)


class Supervisor:
    """Watches a :class:`TritonServer`: a dead process, a dead python stub, or ``probe_failures``
    liveness probes in a row unanswered within ``probe_timeout_s`` (a stopped, SIGSTOP-ed or
    wedged server) make it unhealthy; :meth:`recover` restarts it within the budget."""

    def __init__(
        self,
        triton: TritonServer,
        *,
        budget: RestartBudget | None = None,
        probe_timeout_s: float = 3.0,
        probe_failures: int = 2,
    ) -> None:
        self.triton = triton
        self.budget = budget or RestartBudget()
        self.probe_timeout_s = probe_timeout_s
        self.probe_failures = probe_failures
        self.unanswered = 0
        self.restarting = False
        self.degraded = ""
        """The last probe's :attr:`Health.degraded` (cheap to read from the gateway's health path)."""

    def health(self, *, probe: bool = False) -> Health:
        """The launcher's report, plus the probe's verdict (``probe``: send one now, and read whether
        the defense is degraded; it can take ``probe_timeout_s``, so only the watch loop asks)."""
        report = self.triton.health()
        if not report.ok:
            return report
        if probe:
            self.unanswered = 0 if self.triton.probe(self.probe_timeout_s) else self.unanswered + 1
            self.degraded = self.triton.degraded(self.probe_timeout_s) or ""
        report = replace(report, degraded=self.degraded)
        if self.unanswered >= self.probe_failures:
            pid = self.triton.process.pid if self.triton.process else "?"
            return replace(
                report,
                unanswered=f"tritonserver (pid {pid}) did not answer {self.unanswered} liveness probes within"
                f" {self.probe_timeout_s:g}s each (hung)",
            )
        return report

    def recover(self) -> Health | None:
        """Restart tritonserver if it is unhealthy and the budget allows; the report that triggered
        it, else None (healthy, or waiting out the backoff). Raises :class:`ServerError` once the
        budget is spent: the caller gives up."""
        report = self.health(probe=True)
        if report.ok:
            return None
        now = time.monotonic()
        if self.budget.spent(now):
            raise ServerError(
                f"{report.describe()}; not restarting again after {self.budget.max_restarts} restarts within"
                f" {self.budget.window_s:.0f}s"
            )
        if self.budget.wait(now) > 0:
            return None
        self.restarting = True
        try:
            self.budget.record(now)
            self.unanswered = 0
            self.triton.restart()
        finally:
            self.restarting = False
        return report


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (call from the main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def watch(step: Callable[[], None], stop: threading.Event, *, interval: float = 0.5) -> int:
    """Run ``step`` every ``interval`` seconds until ``stop``; 0, or 1 once ``step`` raises
    :class:`ServerError` (a deliberate give-up, printed). Any other exception is printed and the
    loop goes on (after a pause, so a persistent one does not spin)."""
    while not stop.wait(interval):
        try:
            step()
        except ServerError as err:
            print(f"giving up: {err}", file=sys.stderr, flush=True)
            return 1
        except Exception as err:
            print(f"supervisor: {type(err).__name__}: {err} (going on)", file=sys.stderr, flush=True)
            log.debug("supervisor step failed", exc_info=True)
            stop.wait(min(5.0, 4 * interval))
    return 0


class Startable(Protocol):
    def start(self) -> object: ...

    def stop(self) -> object: ...


def serve(server: Startable, *, banner: Callable[[], str], step: Callable[[], None]) -> int:
    """Start ``server``, print ``banner()``, run ``step`` in :func:`watch` until a signal, stop it."""
    stop = stop_on_signals()
    soft, _ = raise_fd_limit()
    server.start()
    try:
        print(f"{banner()} (open-file limit {soft})", flush=True)
        return watch(step, stop)
    finally:
        server.stop()


def restart_step(supervisor: Supervisor) -> Callable[[], None]:
    """The watch loop's step for both command lines: recover, and say what happened."""

    said = [""]

    def step() -> None:
        t0 = time.monotonic()
        report = supervisor.recover()
        if supervisor.degraded != said[0]:
            said[0] = supervisor.degraded
            print(f"degraded: {said[0]}" if said[0] else "no longer degraded", file=sys.stderr, flush=True)
        if report is not None:
            print(
                f"tritonserver was unhealthy ({report.describe()}); restarted in {time.monotonic() - t0:.1f}s"
                f" ({len(supervisor.budget.times)}/{supervisor.budget.max_restarts} restarts in the window)",
                file=sys.stderr,
                flush=True,
            )

    return step
