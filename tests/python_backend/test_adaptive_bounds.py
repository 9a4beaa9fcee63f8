"""Bounded adaptive-intensity state: a million distinct client ids, rotating ids, and the
server's table under a flood of ids."""

from __future__ import annotations

import gc
import time

import numpy as np
import psutil
import pytest
import requests

from veil.python_backend.adaptive import ANONYMOUS, AdaptiveConfig, ThreatTracker
from veil.python_backend.fingerprint import SIGNATURE_SIZE
from veil.wire import METRICS_FLUSH_S

from ..conftest import PRODUCTION_MAX_CLIENTS


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


LOGITS = np.array([[2.0, -1.0]], np.float32)


def _entry_bound(config: AdaptiveConfig) -> int:
    """Bytes one table entry may take: its ring of signatures plus 1 kB for the id and the counters."""
    return config.fingerprints * SIGNATURE_SIZE * 4 + 1_000


def _signature(i: int) -> np.ndarray:
    return np.full((1, SIGNATURE_SIZE), i, np.int32)


def test_a_million_distinct_ids_stay_within_max_clients():
    """1,000,000 ids at 1,000 new ids per second: the table stays at max_clients entries and its
    memory stops growing once it is full."""
    config = AdaptiveConfig()
    clock = Clock()
    tracker = ThreatTracker(config, clock=clock)
    process = psutil.Process()
    gc.collect()
    rss_start = process.memory_info().rss
    sig = _signature(7)
    t0 = time.perf_counter()
    full_bytes = full_rss = 0
    for i in range(1_000_000):
        clock.t += 0.001
        tracker.observe(f"client-{i:07d}", LOGITS, sig)
        if i == 2 * config.max_clients:  # full, and every entry has been replaced once
            gc.collect()
            full_bytes, full_rss = tracker.measure_bytes(), process.memory_info().rss
    seconds = time.perf_counter() - t0
    gc.collect()
    end_bytes, rss_end = tracker.measure_bytes(), process.memory_info().rss
    print(
        f"\n1,000,000 ids in {seconds:.1f}s: {len(tracker)} tracked (max {config.max_clients}),"
        f" {tracker.evicted} evicted; table {full_bytes / 1e6:.2f} MB when full -> {end_bytes / 1e6:.2f} MB after;"
        f" process RSS {rss_start / 1e6:.1f} MB at start, {full_rss / 1e6:.1f} MB when full,"
        f" {rss_end / 1e6:.1f} MB after"
    )
    assert len(tracker) == config.max_clients
    assert tracker.evicted == 1_000_000 - config.max_clients
    assert "client-0999999" in tracker.clients and "client-0000000" not in tracker.clients
    assert end_bytes <= config.max_clients * _entry_bound(config)
    assert abs(end_bytes - full_bytes) <= 0.01 * full_bytes
    assert tracker.memory_bytes() >= 0.5 * end_bytes  # the O(1) gauge is the right size
    assert rss_end - full_rss < 16 * 1024 * 1024, "the process kept growing after the table was full"


def _stream(pattern: str, n: int) -> list[np.ndarray]:
    """Fingerprints of an attacker's queries: one probe repeated, small edits of it, or all distinct."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 1 << 30, SIGNATURE_SIZE, dtype=np.int32)
    out = []
    for i in range(n):
        if pattern == "repeat":
            sig = base.copy()
        elif pattern == "edits":  # 7 of 8 MinHash values kept: a near-duplicate
            sig = base.copy()
            sig[i % SIGNATURE_SIZE] = rng.integers(0, 1 << 30)
        else:
            sig = rng.integers(0, 1 << 30, SIGNATURE_SIZE, dtype=np.int32)
        out.append(sig[None, :])
    return out


@pytest.mark.parametrize("pattern", ["repeat", "edits", "distinct"])
@pytest.mark.parametrize("rate", [1.0, 4.0, 30.0, 300.0])
@pytest.mark.parametrize(("per_id", "max_clients"), [(1, 10_000), (8, 10_000), (1, 16)])
def test_rotating_ids_never_get_less_than_the_anonymous_default(pattern, rate, per_id, max_clients):
    """The same queries at the same times, sent anonymously and under rotating ids (a fresh id
    every ``per_id`` queries; with max_clients=16 a cycle of 40 ids evicts each before it
    returns): every rotated probing query gets at least the anonymous threat."""
    config = AdaptiveConfig(max_clients=max_clients)
    clock = Clock()
    anonymous, rotating = ThreatTracker(config, clock=clock), ThreatTracker(config, clock=clock)
    worst_gap, anon_max, rotating_min = 0.0, 0.0, 1.0
    for i, sig in enumerate(_stream(pattern, 300)):
        clock.t += 1.0 / rate
        a = anonymous.observe(ANONYMOUS, LOGITS, sig)
        client = f"sybil-{(i // per_id) % 40}" if max_clients < 40 else f"sybil-{i // per_id}"
        r = rotating.observe(client, LOGITS, sig)
        worst_gap, anon_max, rotating_min = max(worst_gap, a - r), max(anon_max, a), min(rotating_min, r)
    if pattern == "distinct":
        # Distinct texts: anonymous traffic is judged by its rate; rotating ids by churn and the
        # young floor (they buy rate, nothing else; see adaptive.py).
        assert rotating_min >= config.young_threat
    else:
        assert worst_gap <= 1e-12, f"rotating ids got {worst_gap:.3f} less threat than anonymous"
        assert anon_max > 0.5  # the comparison means something: anonymous probing is flagged


def test_an_established_id_is_judged_by_its_own_history():
    """After its young phase a client's threat is its own: a calm reader is not dragged up by a
    noisy unattributed bucket."""
    config = AdaptiveConfig()
    clock = Clock()
    tracker = ThreatTracker(config, clock=clock)
    for sig in _stream("distinct", 40):
        clock.t += 1.0
        tracker.observe("reader", LOGITS, sig)
    for sig in _stream("repeat", 200):  # an anonymous prober
        clock.t += 0.01
        tracker.observe(ANONYMOUS, LOGITS, sig)
    assert tracker.observe(ANONYMOUS, LOGITS, _stream("repeat", 1)[0]) > 0.9
    clock.t += 1.0
    assert tracker.observe("reader", LOGITS, _stream("distinct", 1)[0] + 1) == 0.0
    # A newcomer sending something else gets the young floor, not the prober's rate...
    assert tracker.observe("newcomer", LOGITS, _stream("distinct", 1)[0] + 2) == config.young_threat
    # ...but a newcomer sending the prober's text is caught by the shared ring.
    assert tracker.observe("accomplice", LOGITS, _stream("repeat", 1)[0]) > 0.5


@pytest.mark.integration
def test_the_servers_table_stays_bounded(production_stack):
    """Through the production gateway, 3 x max_clients distinct ids: the defense's table (the
    ``veil_tracked_clients`` gauge) fills up to max_clients and no further."""
    from tests.integration.wire import Wire, valid_probabilities

    n = 3 * PRODUCTION_MAX_CLIENTS
    wires = [Wire("http", production_stack.http_url), Wire("grpc", production_stack.grpc_url)]
    for i in range(n):
        answer = wires[i % 2].classify("veil_defended", ["a good film"], headers={"veil-client-id": f"flood-{i}"})
        assert valid_probabilities(answer, 1)
    for w in wires:
        w.close()
    time.sleep(2 * METRICS_FLUSH_S)  # the defense step batches its metric updates
    metrics = requests.get(production_stack.triton.metrics_url, timeout=5).text
    values = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("veil_tracked_clients") and 'model="mia_defense"' in line
    }
    print(f"\nserver table after {n} ids: {values}")
    assert values["veil_tracked_clients"] == PRODUCTION_MAX_CLIENTS
    assert 0 < values["veil_tracked_clients_bytes"] <= PRODUCTION_MAX_CLIENTS * _entry_bound(AdaptiveConfig())
