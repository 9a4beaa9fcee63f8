"""Locust users that classify real sentences through a Veil ensemble over gRPC or HTTP.

    locust -f loadtest/locustfile.py --headless -u 4 -r 4 -t 30s GrpcEnsembleUser
    # target and server from the environment (defaults in brackets):
    #   VEIL_LOADTEST_MODEL [veil_defended], VEIL_GRPC_URL [127.0.0.1:8001],
    #   VEIL_HTTP_URL [127.0.0.1:8000], VEIL_BUILD_DIR [build/sst2-minilm] (sentences),
    #   VEIL_LOADTEST_SPLIT [nonmember_eval], VEIL_LOADTEST_BATCH [1],
    #   VEIL_LOADTEST_CLIENT_IDS [per-user | shared | none],
    #   VEIL_LOADTEST_MAX_REQUESTS (stop each class after this many), VEIL_LOADTEST_SAMPLES_OUT (JSON summary)

``veil.loadtest.runner`` drives the same classes as a library. Locust rounds response times under
100 ms to whole milliseconds, so every request is also timed here with ``perf_counter`` and kept
at microsecond resolution in :data:`COLLECTOR`, which the runner reads.

Import order matters: gevent must patch the standard library before anything opens a socket, and
gRPC's own gevent integration must be switched on after that patch but before any channel exists
(``grpc.experimental.gevent.init_gevent``); otherwise gRPC calls block the whole gevent hub and
"concurrent" users run one at a time. tritonclient.http needs nothing: it is built on
geventhttpclient. Importing this module therefore patches the process; import it first.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

from grpc.experimental import gevent as _grpc_gevent

if not getattr(_grpc_gevent, "_veil_initialised", False):
    _grpc_gevent.init_gevent()
    _grpc_gevent._veil_initialised = True  # type: ignore[attr-defined]

import itertools
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from locust import User, constant, events, task
from locust.exception import StopUser

from veil import wire
from veil.wire import CLIENT_ID_KEY

DEFAULT_MODEL = "veil_defended"
DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}  # when neither the environment nor --host says
CLIENT_ID_MODES = ("per-user", "shared", "none")
FALLBACK_TEXTS = (  # only when no build folder is reachable; the runner always passes real sentences
    "a gripping, funny and moving film",
    "flat, tedious and far too long",
    "the cast is charming but the plot is thin",
    "an unremarkable story told with some warmth",
)


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def strip_scheme(url: str) -> str:
    """tritonclient wants ``host:port``; Locust's ``--host`` usually carries a scheme."""
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
    return url.rstrip("/")


@dataclass
class SampleSet:
    """Every request of one (protocol, model) target: start and latency in seconds, at full resolution."""

    starts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    rows: int = 0
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)


class SampleCollector:
    """Module-level store of perf_counter samples, keyed ``protocol:model``.

    Users append; the runner drains after each round. Greenlets never preempt each other
    inside these methods (no I/O), so no lock is needed.
    """

    def __init__(self) -> None:
        self._sets: dict[str, SampleSet] = defaultdict(SampleSet)
        self._started: dict[str, int] = defaultdict(int)

    def try_start(self, key: str, limit: int) -> bool:
        """Reserve one request for ``key``; False once ``limit`` (0: none) have been started."""
        if limit and self._started[key] >= limit:
            return False
        self._started[key] += 1
        return True

    def record(self, key: str, start: float, latency: float, rows: int, error: BaseException | None) -> None:
        s = self._sets[key]
        if error is None:
            s.starts.append(start)
            s.latencies.append(latency)
            s.rows += rows
        else:
            s.errors += 1
            if len(s.error_examples) < 5:
                s.error_examples.append(f"{type(error).__name__}: {error}"[:300])

    def count(self, key: str | None = None) -> int:
        """Successful plus failed requests so far (all keys when ``key`` is None)."""
        sets = self._sets.values() if key is None else [self._sets.get(key, SampleSet())]
        return sum(len(s.latencies) + s.errors for s in sets)

    def completed_since(self, t0: float) -> int:
        """Successful requests that started at or after ``t0`` (the runner's measurement window)."""
        return sum(sum(1 for t in s.starts if t >= t0) for s in self._sets.values())

    def drain(self) -> dict[str, SampleSet]:
        out, self._sets = dict(self._sets), defaultdict(SampleSet)
        self._started = defaultdict(int)
        return out

    def summary(self) -> dict[str, dict[str, Any]]:
        """Microsecond percentiles per key (what the CLI mode writes to VEIL_LOADTEST_SAMPLES_OUT)."""
        out = {}
        for key, s in self._sets.items():
            us = np.asarray(s.latencies) * 1e6
            out[key] = {
                "requests": len(s.latencies) + s.errors,
                "ok": len(s.latencies),
                "errors": s.errors,
                "rows": s.rows,
                "error_examples": s.error_examples,
                "p50_us": float(np.percentile(us, 50)) if len(us) else None,
                "p99_us": float(np.percentile(us, 99)) if len(us) else None,
                "min_us": float(us.min()) if len(us) else None,
            }
        return out


COLLECTOR = SampleCollector()
_TEXTS: list[str] = []


def set_texts(texts: list[str]) -> None:
    """The sentences users send (the runner loads them once from the build's held-out split)."""
    if not texts:
        raise ValueError("no texts to send")
    _TEXTS[:] = list(texts)


def load_texts(build_dir: str | Path, split: str = "nonmember_eval", limit: int | None = 2000) -> list[str]:
    """Real sentences of one split of a build, the way client/demo.py reads them."""
    from veil.export.build_dir import BuildDir

    return BuildDir(build_dir).texts(split, limit=limit or None)


def texts() -> list[str]:
    if not _TEXTS:
        build_dir = Path(_env("VEIL_BUILD_DIR", "build/sst2-minilm"))
        if (build_dir / "splits.json").exists():  # a build (veil.export.build_dir.BuildDir) is there
            set_texts(load_texts(build_dir, _env("VEIL_LOADTEST_SPLIT", "nonmember_eval")))
        else:
            set_texts(list(FALLBACK_TEXTS))
    return _TEXTS


class EnsembleUser(User):
    """One closed-loop caller: sends, waits for the answer, sends again (no think time).

    Subclasses set ``protocol`` and ``triton`` (the tritonclient module) and override the option hooks
    where the two clients differ; ``model``, ``host``, ``batch`` and ``client_ids`` come from the
    environment or from a subclass made by the runner.
    """

    abstract = True
    wait_time = constant(0)
    protocol: ClassVar[str] = ""
    model: ClassVar[str] = _env("VEIL_LOADTEST_MODEL", DEFAULT_MODEL)
    batch: ClassVar[int] = int(_env("VEIL_LOADTEST_BATCH", "1"))
    client_ids: ClassVar[str] = _env("VEIL_LOADTEST_CLIENT_IDS", "per-user")
    max_requests: ClassVar[int] = int(_env("VEIL_LOADTEST_MAX_REQUESTS", "0"))  # 0: unbounded
    halt: ClassVar[bool] = False  # the runner sets it: finish the request in flight, then stop
    timeout: ClassVar[float] = 60.0
    slots: ClassVar[itertools.count] = itertools.count()
    collector: ClassVar[SampleCollector] = COLLECTOR
    triton: ClassVar[Any] = None  # tritonclient.grpc or tritonclient.http: both offer the same calls
    binary: ClassVar[dict[str, bool]] = {}  # tensor encoding options (HTTP only)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.client_ids not in CLIENT_ID_MODES:
            raise ValueError(f"client_ids must be one of {CLIENT_ID_MODES}, not {self.client_ids!r}")
        self.slot = next(type(self).slots)
        self.key = f"{self.protocol}:{self.model}"
        self.cursor = (self.slot * 7919) % len(texts())
        if self.client_ids == "per-user":
            self.client_id: str | None = f"loadtest-{self.protocol}-{self.slot}"
        else:
            self.client_id = "loadtest" if self.client_ids == "shared" else None
        self.client: Any = None

    def on_start(self) -> None:
        url = strip_scheme(self.host or DEFAULT_URLS[self.protocol])
        self.client = self.triton.InferenceServerClient(url, **self.client_options())

    def on_stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def client_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the protocol's ``InferenceServerClient``."""
        return {}

    def infer_options(self) -> dict[str, Any]:
        """Extra keyword arguments of the protocol's ``infer`` call."""
        return {}

    def next_texts(self) -> np.ndarray:
        pool = texts()
        rows = [pool[(self.cursor + i) % len(pool)].encode("utf-8") for i in range(self.batch)]
        self.cursor = (self.cursor + self.batch) % len(pool)
        return np.array(rows, dtype=object).reshape(self.batch, 1)

    def send(self, data: np.ndarray) -> Any:
        """One inference of ``data``, asking for what a client of the ensemble gets: probabilities and label."""
        inp = self.triton.InferInput(wire.TEXT, list(data.shape), "BYTES")
        inp.set_data_from_numpy(data, **self.binary)
        outputs = [self.triton.InferRequestedOutput(name, **self.binary) for name in (wire.PROBABILITIES, wire.LABEL)]
        params = {CLIENT_ID_KEY: self.client_id} if self.client_id else None
        return self.client.infer(self.model, [inp], outputs=outputs, parameters=params, **self.infer_options())

    @task
    def classify(self) -> None:
        """One request, timed twice: perf_counter for us, a Locust request event for Locust's stats."""
        if self.halt or not self.collector.try_start(self.key, self.max_requests):
            raise StopUser()
        data = self.next_texts()
        error: BaseException | None = None
        start = time.perf_counter()
        try:
            result = self.send(data)
            latency = time.perf_counter() - start
            probs = result.as_numpy(wire.PROBABILITIES)
            if probs is None or probs.shape[0] != self.batch or not np.isfinite(probs).all():
                raise ValueError(f"bad probabilities: {None if probs is None else probs.shape}")
        except Exception as exc:  # counted, never raised: Locust keeps the user running
            latency = time.perf_counter() - start
            error = exc
        self.collector.record(self.key, start, latency, self.batch, error)
        self.environment.events.request.fire(
            request_type=self.protocol.upper(),
            name=self.key,
            response_time=latency * 1e3,
            response_length=self.batch,
            exception=error,
            context={"model": self.model, "protocol": self.protocol},
        )


class GrpcEnsembleUser(EnsembleUser):
    """tritonclient.grpc, made cooperative by ``init_gevent`` at import time."""

    protocol = "grpc"
    host = _env("VEIL_GRPC_URL", DEFAULT_URLS["grpc"])
    triton = grpcclient

    def infer_options(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout}


class HttpEnsembleUser(EnsembleUser):
    """tritonclient.http: geventhttpclient underneath, one connection per user; tensors as binary data."""

    protocol = "http"
    host = _env("VEIL_HTTP_URL", DEFAULT_URLS["http"])
    triton = httpclient
    binary: ClassVar[dict[str, bool]] = {"binary_data": True}

    def client_options(self) -> dict[str, Any]:
        return {"connection_timeout": self.timeout, "network_timeout": self.timeout}


def user_class(
    protocol: str,
    model: str,
    host: str,
    *,
    batch: int = 1,
    client_ids: str = "per-user",
    max_requests: int = 0,
    collector: SampleCollector = COLLECTOR,
) -> type[EnsembleUser]:
    """A fresh subclass bound to one target; its slot counter restarts, so client ids repeat per round."""
    base = {"grpc": GrpcEnsembleUser, "http": HttpEnsembleUser}[protocol]
    attrs = {
        "model": model,
        "host": host,
        "batch": batch,
        "client_ids": client_ids,
        "max_requests": max_requests,
        "halt": False,
        "slots": itertools.count(),
        "collector": collector,
    }
    return type(f"{base.__name__}_{model}", (base,), attrs)


@events.quitting.add_listener
def _write_summary(environment: Any, **_: Any) -> None:
    """CLI mode: leave the microsecond summary where VEIL_LOADTEST_SAMPLES_OUT points."""
    out = os.environ.get("VEIL_LOADTEST_SAMPLES_OUT")
    if out:
        Path(out).write_text(json.dumps(COLLECTOR.summary(), indent=2))
