"""The watch loop both command lines run: check every half second until SIGINT/SIGTERM.

One loop for ``veil-serve`` (tritonserver alone) and the production gateway, so a rule about
restarting is written once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from veil.serving.launcher import ServerError


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (call from the main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def watch(step: Callable[[], None], stop: threading.Event, *, interval: float = 0.5) -> int:
    """Run ``step`` every ``interval`` seconds until ``stop``; 0, or 1 once ``step`` raises
    :class:`ServerError` (it is printed: the process gives up)."""
    while not stop.wait(interval):
        try:
            step()
        except ServerError as err:
            print(f"giving up: {err}", file=sys.stderr, flush=True)
            return 1
    return 0


class Startable(Protocol):
    def start(self) -> object: ...

    def stop(self) -> object: ...


def serve(server: Startable, *, banner: Callable[[], str], step: Callable[[], None]) -> int:
    """Start ``server``, print ``banner()``, run ``step`` in :func:`watch` until a signal, stop it."""
    stop = stop_on_signals()
    server.start()
    try:
        print(banner(), flush=True)
        return watch(step, stop)
    finally:
        server.stop()
