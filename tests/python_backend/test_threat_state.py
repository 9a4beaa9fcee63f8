"""The state backends: the Redis backend gives the in-process threats, atomically, and falls back safely."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.python_backend.adaptive import ANONYMOUS, AdaptiveConfig
from veil.python_backend.fingerprint import EMPTY, MINHASH_SIZE, SIGNATURE_SIZE, SKETCH_SIZE
from veil.python_backend.redis_state import entry_bytes
from veil.python_backend.threat_state import FALLBACK_THREAT, StateConfig, make_state
from veil.serving.launcher import free_port
from veil.serving.state_store import RedisServer

# Small thresholds so short streams cross every branch: young by rows and by age, TTL expiry,
# churn, rate and near-duplicate ramps, ring overflow.
CONFIG = AdaptiveConfig(ttl_s=30.0, young_rows=4, young_s=1.0, churn_low=0.5, churn_high=8.0, fingerprints=6)
BASE = np.random.default_rng(7).integers(0, 2**31 - 1, (5, SIGNATURE_SIZE), dtype=np.int64).astype(np.int32)
_prefix = itertools.count()


def redis_state(url: str, prefix: str, *, config: AdaptiveConfig = CONFIG, timeout_s: float = 0.05):
    return make_state(
        config=StateConfig(backend="redis", url=url, key_prefix=prefix, timeout_s=timeout_s), adaptive=config
    )


KEEP = (0, 0, 0xFFFF, 0x00FF, 0x0F0F, 0x0003, 0xF000, 0x5555)
"""Sketch values a row keeps (bit j: the base's j-th), 0 = the whole base signature: crops of it."""
row = st.tuples(
    st.integers(0, len(BASE) - 1), st.integers(0, SIGNATURE_SIZE - 1), st.integers(0, 3), st.sampled_from(KEEP)
)
request = st.tuples(st.sampled_from([ANONYMOUS, "alice", "bob", "carol", "dave"]), st.lists(row, max_size=4))
step = st.tuples(
    st.sampled_from([0.0, 1e-3, 0.05, 0.4, 2.0, 30.0, 30.5]),
    st.lists(request, min_size=1, max_size=4),
    st.sampled_from([0.0, 1e-3, 0.07, 0.3, 1 / 3]),  # the step's seconds per row: every busy share
)


def signatures(rows: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Rows of near-duplicates (a base signature with one position changed by ``delta``) and of
    crops (``keep`` != 0: another MinHash part, a subset of the base's sketch, padded with EMPTY)."""
    sig = np.zeros((len(rows), SIGNATURE_SIZE), np.int32)
    for k, (base, pos, delta, keep) in enumerate(rows):
        sig[k] = BASE[base]
        sig[k, pos] += delta
        if keep:
            sig[k, :MINHASH_SIZE] += keep
            kept = BASE[base, MINHASH_SIZE:][[(keep >> j) & 1 == 1 for j in range(SKETCH_SIZE)]]
            sig[k, MINHASH_SIZE:] = EMPTY
            sig[k, MINHASH_SIZE : MINHASH_SIZE + len(kept)] = kept
    return sig


@settings(max_examples=40, deadline=None)
@given(st.lists(step, min_size=1, max_size=25))
def test_redis_threats_equal_in_process_threats(redis_server, stream):
    """Same traffic, same threats, to the bit, while two 'instances' share the Redis state."""
    prefix = f"eq{next(_prefix)}:"
    memory = make_state(config=StateConfig(), adaptive=CONFIG)
    instances = [redis_state(redis_server.url, prefix), redis_state(redis_server.url, prefix)]
    now = 5000.0
    for k, (dt, requests, cost) in enumerate(stream):
        now += dt
        batch = [(client, signatures(rows)) for client, rows in requests]
        expected = memory.observe(batch, now=now, row_cost_s=cost)
        got = instances[k % 2].observe(batch, now=now, row_cost_s=cost)
        assert not got.fallback
        assert got.threats == expected.threats, (k, batch)
    for inst in instances:
        inst.close()


def test_redis_threats_equal_in_process_threats_on_a_long_seeded_stream(redis_server):
    """A longer stream than the property draws: clients come and go past the TTL, ids rotate."""
    rng = np.random.default_rng(11)
    prefix = f"seeded{next(_prefix)}:"
    memory = make_state(config=StateConfig(), adaptive=CONFIG)
    instances = [redis_state(redis_server.url, prefix), redis_state(redis_server.url, prefix)]
    clients = [ANONYMOUS, "alice", "bob", "carol"]
    now, seen = 5000.0, 0
    for k in range(600):
        now += float(rng.choice([0.0, 1e-3, 0.02, 0.3, 1.5, 30.0, 30.5], p=[0.2, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05]))
        batch = []
        for _ in range(rng.integers(1, 5)):
            client = str(rng.choice(clients)) if rng.random() < 0.8 else f"rotating-{k}"
            base, pos, delta = int(rng.integers(len(BASE))), int(rng.integers(SIGNATURE_SIZE)), int(rng.integers(3))
            rows = [(base, pos, delta, int(rng.choice(KEEP)))]
            batch.append((client, signatures(rows * int(rng.integers(1, 4)))))
        cost = float(rng.choice([0.0, 0.01, 0.1, 0.3]))
        expected = memory.observe(batch, now=now, row_cost_s=cost).threats
        assert instances[k % 2].observe(batch, now=now, row_cost_s=cost).threats == expected, k
        seen += len(set(expected))
    assert seen > 600  # the stream produced varied threats, not one constant


def test_concurrent_instances_update_atomically(redis_server):
    """Four instances hammer one client at once: no update is lost (one script per batch is atomic)."""
    prefix = f"atomic{next(_prefix)}:"
    instances = [redis_state(redis_server.url, prefix, timeout_s=2.0) for _ in range(4)]

    def hammer(state) -> None:
        for _ in range(50):
            assert not state.observe([("mallory", BASE[:2]), ("other", BASE[2:3])]).fallback

    threads = [threading.Thread(target=hammer, args=(s,)) for s in instances]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = instances[0].peek("mallory")
    assert stored["rows"] == 4 * 50 * 2
    assert stored["ring_rows"] == CONFIG.fingerprints
    assert instances[0].peek("other")["rows"] == 4 * 50


def test_entry_memory_and_native_expiry(redis_server):
    """A client with a full ring costs about ``entry_bytes`` and carries the TTL; shared keys never expire."""
    prefix = f"mem{next(_prefix)}:"
    default = AdaptiveConfig()
    state = redis_state(redis_server.url, prefix, config=default)
    for k in range(default.fingerprints):
        state.observe([("erin", BASE[k % len(BASE)][None] + k), (ANONYMOUS, BASE[:1])])
    assert state.peek("erin")["ring_rows"] == default.fingerprints
    client = redis.Redis.from_url(redis_server.url)
    used = client.memory_usage(f"{prefix}c:erin")
    print(f"\nMEMORY USAGE of a client with a full ring of {default.fingerprints}: {used} bytes")
    assert entry_bytes(default.fingerprints) / 2 < used <= entry_bytes(default.fingerprints)
    assert 0 < client.pttl(f"{prefix}c:erin") <= default.ttl_s * 1000
    assert client.pttl(f"{prefix}anon") == -1 and client.pttl(f"{prefix}churn") == -1
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-lru"
    assert int(client.config_get("maxmemory")["maxmemory"]) > 0


def test_store_down_or_slow_falls_back_and_recovers():
    """No server, then a hung one (SIGSTOP), then a live one: fallback threat 1 within the timeout,
    a stated problem, and real threats again once the store answers."""
    port = free_port()
    state = make_state(
        config=StateConfig(backend="redis", url=f"redis://127.0.0.1:{port}/0", max_backoff_s=0.2), adaptive=CONFIG
    )
    down = state.observe([("frank", BASE[:1]), (ANONYMOUS, BASE[:2])])
    assert down.fallback and down.threats == [FALLBACK_THREAT] * 2
    assert "unreachable" in state.problem()
    with RedisServer(port=port) as srv:
        srv.pause()
        try:
            state.reconnect.retry_at = 0.0  # skip the backoff: this call must reach the hung server
            hung = state.observe([("frank", BASE[:1])])
            assert hung.fallback and "Timeout" in state.problem()
        finally:
            srv.resume()
        state.reconnect.retry_at = 0.0
        back = state.observe([("frank", BASE[:1])])
        assert not back.fallback and back.threats[0] < FALLBACK_THREAT
        assert state.problem() is None
    state.close()


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown state backend"):
        make_state(config=StateConfig(backend="etcd"), adaptive=CONFIG)
