"""What the shared adaptive state costs: the state step alone, in-process against Redis, per batch.

    python -m veil.loadtest.state_bench                  # starts a local redis-server
    python -m veil.loadtest.state_bench --redis-url redis://host:6379/0
    python -m veil.loadtest.state_bench --rings 32 128   # ring lengths side by side, in one run

A dynamic batch of B requests (one row each, from ``clients`` callers, signatures drawn from a pool
so some rows are near-duplicates) goes through ``ThreatState.observe`` as ``mia_defense`` does:
the in-process table, then Redis (one Lua script per batch). Prints the median milliseconds per
batch and the added microseconds per request; ``python -m veil.loadtest.defense_bench --state``
runs it too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from veil.python_backend.adaptive import AdaptiveConfig
from veil.python_backend.fingerprint import SIGNATURE_SIZE
from veil.python_backend.threat_state import StateConfig, ThreatState, make_state

BATCHES = (1, 8, 64, 256)


def batches(n: int, batch: int, *, clients: int, seed: int = 0) -> list[list[tuple[str, np.ndarray]]]:
    """``n`` batches of ``batch`` one-row requests; a 2,000-signature pool makes about one row in
    eight a near-duplicate of a caller's recent ones at the default ring size."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**31 - 1, (2000, SIGNATURE_SIZE), dtype=np.int64).astype(np.int32)
    return [
        [(f"client-{rng.integers(clients)}", pool[rng.integers(len(pool), size=1)]) for _ in range(batch)]
        for _ in range(n)
    ]


def time_state(state: ThreatState, work: list[list[tuple[str, np.ndarray]]], *, warmup: int = 5) -> float:
    """Median seconds per ``observe`` over ``work`` (the first ``warmup`` batches not counted)."""
    times = []
    for k, batch in enumerate(work):
        t = time.perf_counter()
        observed = state.observe(batch)
        if observed.fallback:
            raise RuntimeError(f"the state store did not answer: {state.problem()}")
        if k >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(*, url: str, repeats: int, clients: int, ring: int | None = None) -> list[dict[str, float]]:
    """Per batch size, median ms in-process and in Redis; ``ring``: ``AdaptiveConfig.fingerprints``
    (the served default if None)."""
    adaptive = AdaptiveConfig() if ring is None else replace(AdaptiveConfig(), fingerprints=ring)
    rows = []
    for b in BATCHES:
        work = batches(repeats + 5, b, clients=clients, seed=b)
        memory = make_state(config=StateConfig(), adaptive=adaptive)
        redis = make_state(config=StateConfig(backend="redis", url=url, timeout_s=5.0), adaptive=adaptive)
        redis.client.flushdb()
        mem_s, red_s = time_state(memory, work), time_state(redis, work)
        redis.close()
        rows.append({"batch": b, "memory_ms": 1e3 * mem_s, "redis_ms": 1e3 * red_s})
    return rows


def to_markdown(rows: list[dict[str, float]], *, ping_ms: float, ring: int) -> str:
    lines = [
        f"State step per dynamic batch (one row per request; a {ring}-row ring; Redis PING round trip"
        f" {ping_ms:.3f} ms).",
        "",
        "| requests per batch | in-process ms | Redis ms | added ms per batch | added µs per request |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        added = r["redis_ms"] - r["memory_ms"]
        per_request = 1e3 * added / r["batch"]
        lines.append(f"| {r['batch']} | {r['memory_ms']:.3f} | {r['redis_ms']:.3f} | {added:.3f} | {per_request:.1f} |")
    return "\n".join(lines) + "\n"


def ping_ms(url: str, n: int = 200) -> float:
    import redis

    client = redis.Redis.from_url(url)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - t)
    client.close()
    return 1e3 * statistics.median(times)


def run(*, redis_url: str | None, repeats: int, clients: int, rings: Sequence[int] | None = None) -> str:
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            from veil.serving.state_store import RedisServer

            redis_url = stack.enter_context(RedisServer()).url
        parts = [
            to_markdown(
                bench(url=redis_url, repeats=repeats, clients=clients, ring=ring),
                ping_ms=ping_ms(redis_url),
                ring=ring,
            )
            for ring in rings or [AdaptiveConfig().fingerprints]
        ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis-url", default=None, help="a running Redis (default: start a local redis-server)")
    p.add_argument("--repeats", type=int, default=200, help="batches timed per size")
    p.add_argument("--clients", type=int, default=64, help="distinct callers the requests come from")
    p.add_argument("--rings", type=int, nargs="+", default=None, help="ring lengths (default: the served one)")
    a = p.parse_args(argv)
    print(run(redis_url=a.redis_url, repeats=a.repeats, clients=a.clients, rings=a.rings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
