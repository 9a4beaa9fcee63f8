"""Bounds on what callers can hold: open HTTP connections, slow or idle ones, requests in flight.

aiohttp has no request-head timeout (a caller that sends half a request line keeps its connection,
and a file descriptor, for ever; 1,070 of them took the gateway down at the common 1024 limit), and
neither front end caps work in flight. Both guards run on the gateway's event loop only, so they
need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from veil.serving.validation import CallerError


@dataclass
class _Conn:
    handler: web.RequestHandler
    since: float
    """When the connection opened, or its last request ended."""
    busy: int = 0
    """Requests of this connection being handled now."""


class ConnectionGuard:
    """Wraps aiohttp's protocol factory: at most ``max_connections`` open, and a connection that
    has no request being handled (a request head still arriving, or idle between requests) is
    closed after ``header_timeout_s``. A request being handled has its own deadlines."""

    def __init__(self, factory: Callable[[], web.RequestHandler], *, max_connections: int, header_timeout_s: float):
        self.factory = factory
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.conns: dict[int, _Conn] = {}
        self.refused = 0
        self.timed_out = 0
        self._sweeper: asyncio.Task | None = None

    def __call__(self) -> web.RequestHandler:
        handler = self.factory()
        key = id(handler)
        if len(self.conns) >= self.max_connections:
            # At the cap, connections that have closed since the last sweep free their places now
            # (a handler has no transport before connection_made, and none after connection_lost).
            now = time.monotonic()
            for k, conn in list(self.conns.items()):
                transport = conn.handler.transport
                if (transport is None and now - conn.since > 0.1) or (transport is not None and transport.is_closing()):
                    del self.conns[k]
        if len(self.conns) >= self.max_connections:
            self.refused += 1
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._close, handler)  # after connection_made, queued just now
        else:
            self.conns[key] = _Conn(handler, time.monotonic())
        return handler

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    @staticmethod
    def _close(handler: web.RequestHandler) -> None:
        if handler.transport is not None:
            handler.transport.close()

    @contextlib.contextmanager
    def request(self, handler: web.RequestHandler) -> Iterator[None]:
        """Mark a request of ``handler``'s connection as being handled (from a middleware)."""
        conn = self.conns.get(id(handler))
        if conn is not None:
            conn.busy += 1
        try:
            yield
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.since = time.monotonic()

    async def _sweep(self) -> None:
        period = min(1.0, self.header_timeout_s / 2)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for key, conn in list(self.conns.items()):
                if conn.handler.transport is None or conn.handler.transport.is_closing():
                    if now - conn.since > period:  # closed: forget it (one sweep later, so a
                        del self.conns[key]  # connection being set up is not dropped)
                elif not conn.busy and now - conn.since > self.header_timeout_s:
                    self.timed_out += 1
                    self._close(conn.handler)
                    del self.conns[key]


class Admission:
    """Requests in flight: at most ``total`` together and ``per_caller`` for one caller; the next
    one is refused at once (429 / RESOURCE_EXHAUSTED) rather than queued behind the others."""

    def __init__(self, *, total: int, per_caller: int) -> None:
        self.total = total
        self.per_caller = per_caller
        self.in_flight = 0
        self.by_caller: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, caller: str, per_caller: int | None = None) -> Iterator[None]:
        """One request of ``caller`` in flight; ``per_caller`` overrides the default cap (an API key's)."""
        cap = per_caller or self.per_caller
        if self.in_flight >= self.total:
            raise _busy(f"the gateway is busy ({self.total} requests in flight); retry shortly", "busy")
        if self.by_caller.get(caller, 0) >= cap:
            raise _busy(
                f"too many requests in flight for this caller (the limit is {cap}); retry shortly", "too-many-in-flight"
            )
        self.in_flight += 1
        self.by_caller[caller] = self.by_caller.get(caller, 0) + 1
        try:
            yield
        finally:
            self.in_flight -= 1
            left = self.by_caller[caller] - 1
            if left:
                self.by_caller[caller] = left
            else:
                del self.by_caller[caller]


def _busy(message: str, reason: str) -> CallerError:
    err = CallerError(message, status=429, reason=reason)
    err.retry_after = 1
    return err
