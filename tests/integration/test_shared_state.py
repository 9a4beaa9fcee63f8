"""Beyond one process: two real tritonservers (one with two defense instances) sharing a real Redis.

- A probing stream split over the two replicas gets the threat (and the bytes) it gets on one.
- Redis hung (SIGSTOP) and killed under load, then restarted: every answer arrives, keeps its
  label, is never the raw output, is served at threat 1 while the store is away, and the defense
  reports degraded, counts the fallback and recovers.
- The gateway balances over both replicas; one is killed under load and no request is lost.

The adaptive settings switch off the time-dependent parts (young ids, rate, busy share, churn, the
fade of the near-duplicate share), so the threat is a function of the query sequence alone and comparisons are
exact whatever the machine's speed; the store's timeout is 250 ms rather than the default 50 ms so
that a starved test machine does not time out a healthy Redis (a fallback changes the bytes).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from veil.model_repository.spec import DEFENDED, RAW
from veil.python_backend.adaptive import AdaptiveConfig
from veil.python_backend.threat_state import StateConfig, make_state
from veil.serving.gateway import Gateway
from veil.serving.launcher import TritonServer, repositories_for
from veil.serving.policy import ADMIN_KEY_HEADER, GATEWAY_KEY_HEADER, internal_triton_args
from veil.serving.state_store import RedisServer
from veil.wire import CLIENT_ID_KEY

from ..conftest import synthetic_rows, tiny_repository
from .wire import Answer, Callers, Wire, valid_probabilities

pytestmark = pytest.mark.integration

KEY, ADMIN = "shared-state-gateway-key", "shared-state-admin-key"
ADAPTIVE = {
    "young_rows": 0,
    "young_s": 0.0,
    "rate_low": 1e6,
    "rate_high": 2e6,
    "busy_low": 1e6,
    "busy_high": 2e6,
    "churn_low": 1e6,
    "churn_high": 2e6,
    "duplicate_window_s": 1e12,
}
TEXTS = [text for text, _ in synthetic_rows(24, seed=41)]


@pytest.fixture(scope="module")
def store():
    with RedisServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def replicas(tiny_build, tmp_path_factory, store):
    """Replica A with two mia_defense instances, replica B with one; one Redis; the gateway's keys."""
    root = tmp_path_factory.mktemp("replicas")
    common = {
        "variants": ("veil",),
        "state_backend": "redis",
        "state_url": store.url,
        "state_timeout_ms": 250,
        "adaptive": json.dumps(ADAPTIVE),
    }
    servers = [
        TritonServer(
            repositories_for(tiny_repository(tiny_build, root / name, defense_instances=count, **common)),
            log_file=root / f"{name}.log",
            extra_args=internal_triton_args(KEY, ADMIN),
        )
        for name, count in (("a", 2), ("b", 1))
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(TritonServer.start, servers))
    yield servers
    for server in servers:
        server.stop()


def alive(servers: list[TritonServer]) -> list[TritonServer]:
    for server in servers:
        if not server.alive():
            server.restart()
    return servers


def inside(server: TritonServer, protocol: str = "http") -> Wire:
    return Wire(protocol, server.http_url if protocol == "http" else server.grpc_url, headers={GATEWAY_KEY_HEADER: KEY})


@pytest.fixture(scope="module")
def raw(replicas) -> dict[str, np.ndarray]:
    """The undefended probabilities of every text (veil_raw, benchmark mode)."""
    with inside(replicas[0]) as wire:
        answer = wire.classify(RAW, TEXTS)
    assert answer.ok, answer
    return dict(zip(TEXTS, answer["probabilities"], strict=True))


def redis_view(store: RedisServer):
    return make_state(config=StateConfig(backend="redis", url=store.url), adaptive=AdaptiveConfig(**ADAPTIVE))


def test_a_probing_stream_split_over_two_replicas_gets_the_threat_it_gets_on_one(replicas, store):
    stream = [TEXTS[i % 5] for i in range(24)]  # five texts, probed over and over

    def probe(client: str, servers: list[TritonServer]) -> list[bytes]:
        wires = [inside(s) for s in servers]
        out = []
        for k, text in enumerate(stream):
            answer = wires[k % len(wires)].classify(DEFENDED, [text], headers={CLIENT_ID_KEY: client})
            assert valid_probabilities(answer, 1), answer
            out.append(answer["probabilities"].tobytes())
        return out

    split = probe("prober-split", alive(replicas))
    one = probe("prober-one", replicas[:1])
    assert split == one
    assert split[0] != split[20], "the rising threat never changed an output: the comparison says nothing"
    view = redis_view(store)
    a, b = view.peek("prober-split"), view.peek("prober-one")
    assert a["rows"] == b["rows"] == len(stream)  # every row counted once, whichever replica served it
    assert a["dup"] == pytest.approx(b["dup"], rel=1e-9) and a["dup"] > 0.3
    view.close()


class Load(Callers):
    """``threads`` callers, each request a fresh client id and a text of the pool, until stopped;
    records (sent, done, text, answer)."""

    def __init__(self, make: Callable[[int], Wire], *, threads: int, name: str) -> None:
        super().__init__()
        self.results: list[tuple[float, float, str, Answer]] = []
        self.threads = [threading.Thread(target=self._run, args=(make, k, name), daemon=True) for k in range(threads)]

    def _run(self, make: Callable[[int], Wire], k: int, name: str) -> None:
        rng = np.random.default_rng(k)
        with make(k) as wire:
            n = 0
            while not self.stopping.is_set():
                text = TEXTS[int(rng.integers(len(TEXTS)))]
                sent = time.monotonic()
                try:
                    answer = wire.classify(DEFENDED, [text], headers={CLIENT_ID_KEY: f"{name}-{k}-{n}"}, timeout=20)
                except Exception as err:
                    answer = Answer("exception", repr(err))
                self.results.append((sent, time.monotonic(), text, answer))
                n += 1

    def between(self, start: float, end: float) -> list[tuple[str, Answer]]:
        return [(text, a) for sent, done, text, a in self.results if start <= sent and done <= end]


def wait_for(check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s")


def metric(server: TritonServer, name: str) -> float:
    text = requests.get(server.metrics_url, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def one_vector_per_label(answers: list[tuple[str, Answer]]) -> bool:
    seen: dict[int, set[bytes]] = {}
    for _, a in answers:
        seen.setdefault(int(a["label"][0, 0]), set()).add(a["probabilities"].tobytes())
    return all(len(v) == 1 for v in seen.values())


def test_redis_hung_or_killed_never_fails_a_request_and_serves_threat_one(replicas, store, raw):
    server = alive(replicas)[0]
    fallback_before = metric(server, "veil_state_fallback_total")
    degraded = lambda: server.degraded(timeout=10)  # noqa: E731 - a starved machine answers slowly
    with Load(lambda k: inside(server), threads=3, name="load") as load:
        t0 = time.monotonic()
        wait_for(lambda: len(load.between(t0, time.monotonic())) >= 12, 30.0)
        store.pause()  # slow: the port accepts, nothing answers
        hung = time.monotonic()
        wait_for(degraded, 10.0)
        time.sleep(1.0)
        resumed = time.monotonic()  # before: Redis may answer the moment it resumes
        store.resume()
        time.sleep(0.5)
        store.stop()  # down: SIGKILL
        killed = time.monotonic()
        time.sleep(1.5)
        assert "threat 1" in wait_for(degraded, 10.0)
        restarted = time.monotonic()  # before: Redis answers as soon as it listens
        store.start()  # the same port, empty
        wait_for(lambda: degraded() is None and store_seen(store), 20.0)
        recovered = time.monotonic()
        wait_for(lambda: len(load.between(recovered, time.monotonic())) >= 6, 30.0)
    assert len(load.results) > 20
    for _, _, text, answer in load.results:
        assert valid_probabilities(answer, 1), answer  # never an error, whatever Redis did
        assert answer["label"][0, 0] == raw[text].argmax()
        assert answer["probabilities"].tobytes() != raw[text].tobytes(), "raw output served"
    normal, after = load.between(t0, hung), load.between(recovered, float("inf"))
    during = load.between(hung + 0.1, resumed) + load.between(killed + 0.1, restarted)
    assert during
    assert one_vector_per_label(during), "an answer during the outage was not at threat 1 (label-only level)"
    assert not one_vector_per_label(normal + after), "threat 1 looks like the normal level: the check says nothing"
    served = {text: a["probabilities"].tobytes() for text, a in normal}
    for text, a in after:  # recovered: the normal level again (fresh ids, threat 0, deterministic)
        if text in served:
            assert a["probabilities"].tobytes() == served[text]
    assert metric(server, "veil_state_fallback_total") - fallback_before >= len(during)


def store_seen(store: RedisServer) -> bool:
    """The restarted Redis holds client state again (the defense writes to it)."""
    view = redis_view(store)
    try:
        return view.client.dbsize() > 0
    finally:
        view.close()


def stats(server: TritonServer) -> int:
    url = f"http://{server.http_url}/v2/models/{DEFENDED}/stats"
    body = requests.get(url, headers={ADMIN_KEY_HEADER: ADMIN}, timeout=5).json()
    return int(body["model_stats"][0]["inference_count"])


def test_the_gateway_balances_and_a_replica_killed_under_load_loses_no_request(replicas, raw):
    a, b = alive(replicas)
    gateway = Gateway(f"{a.http_url},{b.http_url}", f"{a.grpc_url},{b.grpc_url}", upstream_key=KEY)
    with gateway:
        before = [stats(a), stats(b)]
        protocols = ["http", "grpc", "http", "grpc"]
        make = lambda k: Wire(protocols[k], gateway.http_url if protocols[k] == "http" else gateway.grpc_url)  # noqa: E731
        with Load(make, threads=4, name="gw") as load:
            time.sleep(1.5)
            assert stats(a) > before[0] and stats(b) > before[1], "both replicas serve"
            os.killpg(b.process.pid, signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(2.0)
        pool = gateway.upstreams.status()
    for _, _, text, answer in load.results:
        assert valid_probabilities(answer, 1), answer  # no request lost
        assert answer["label"][0, 0] == raw[text].argmax()
    after = load.between(killed + 0.5, float("inf"))
    assert len(after) > 10
    assert [r["healthy"] for r in pool] == [True, False], pool
    print(f"{len(load.results)} answers, {gateway.upstreams.retries} sent again to the other replica")
