from __future__ import annotations

import numpy as np
import pytest

from veil.export.train import packaged_minilm
from veil.python_backend.adaptive import ANONYMOUS, AdaptiveConfig, ServiceCost, ThreatTracker, normalise_client_id
from veil.python_backend.fingerprint import SIGNATURE_SIZE
from veil.python_backend.tokens import TextEncoder


@pytest.fixture(scope="module")
def encoder_signatures():
    enc = TextEncoder(packaged_minilm(), input_names=["input_ids", "attention_mask"], max_length=64)
    return lambda texts: enc(texts)["fingerprint"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (n, 2)).astype(np.float32)


def test_calm_client_has_no_threat_once_established():
    """A new id is young (threat young_threat) until it has history; then a calm caller gets 0."""
    clock = Clock()
    cfg = AdaptiveConfig()
    tr = ThreatTracker(cfg, clock=clock)
    threats = []
    for i in range(50):
        clock.t += 1.0
        threats.append(tr.observe("alice", rows(1, i)))
    assert threats[0] == cfg.young_threat
    assert threats[-1] == 0.0
    assert threats.index(0.0) == cfg.young_rows  # young for its first 32 rows (and 32 s > young_s)


def test_burst_raises_threat_and_it_decays():
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    threat = 0.0
    for i in range(400):
        clock.t += 0.005  # 200 rows/s for 2 s
        threat = tr.observe("mallory", rows(1, i))
    assert threat > 0.5
    clock.t += 120
    assert tr.observe("mallory", rows(1, 999)) < 0.05


@pytest.mark.parametrize(("row_cost_s", "expected"), [(0.0, 0.0), (0.005, 0.0), (0.05, 0.5), (0.2, 1.0)])
def test_busy_share_is_the_rate_in_units_of_the_hardware(row_cost_s, expected):
    """One established caller at 15 rows/s, under ``rate_low``: no threat on hardware where a row
    costs 5 ms (busy share 0.075), a threat where its rows keep the step busy (50 ms a row: 0.75
    of the time, halfway up the ramp; 200 ms: saturated)."""
    clock = Clock()
    cfg = AdaptiveConfig()
    tr = ThreatTracker(cfg, clock=clock)
    for i in range(200):  # 15 rows/s for about 13 s: past young, the rate settled
        clock.t += 1 / 15
        threat = tr.observe("carol", rows(1, i), row_cost_s=row_cost_s)
    rate = tr.clients["carol"].rate
    assert rate < cfg.rate_low
    assert rate * row_cost_s == pytest.approx(15 * row_cost_s, rel=0.05)
    busy = min(1.0, max(0.0, (rate * row_cost_s - cfg.busy_low) / (cfg.busy_high - cfg.busy_low)))
    assert threat == pytest.approx(busy) and threat == pytest.approx(expected, abs=0.05)


def test_service_cost_is_a_row_weighted_average_of_seconds_per_row():
    cost = ServiceCost(span_rows=4)
    assert cost.per_row == 0.0
    cost.add(0.8, 4)  # the first batch sets it
    assert cost.per_row == pytest.approx(0.2)
    cost.add(0.0, 0)  # nothing served, a negative or non-finite time: ignored
    cost.add(-1.0, 3)
    cost.add(float("nan"), 3)
    assert cost.per_row == pytest.approx(0.2) and cost.rows == 4
    cost.add(0.4, 4)  # 0.1 s a row, weight 1 - (3/4)^4 of the average
    keep = 0.75**4
    assert cost.per_row == pytest.approx(0.2 * keep + 0.1 * (1 - keep))
    for _ in range(50):  # it follows the hardware it runs on
        cost.add(0.04, 4)
    assert cost.per_row == pytest.approx(0.01, rel=1e-3)


def test_repeated_queries_raise_threat():
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    probe = rows(1, 0)
    threat = 0.0
    for i in range(100):
        clock.t += 0.5  # slow: rate alone stays below the threshold
        threat = tr.observe("prober", probe + np.float32(1e-3 * (i % 3)))  # near-duplicates
    assert threat > 0.5
    other = ThreatTracker(clock=clock)
    honest = []
    for i in range(100):
        clock.t += 0.5
        honest.append(other.observe("honest", rows(1, i)))
    assert max(honest[40:]) == 0.0


def test_anonymous_callers_share_one_bucket():
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    for i in range(100):
        clock.t += 0.01
        tr.observe(ANONYMOUS, rows(1, i))
    assert len(tr) == 0  # outside the LRU table: never evicted
    assert tr.unattributed.rows == 100


def test_table_is_bounded_and_lru():
    clock = Clock()
    tr = ThreatTracker(AdaptiveConfig(max_clients=100), clock=clock)
    for i in range(10_000):
        clock.t += 0.001
        tr.observe(f"id-{i}", rows(1, 0))
    assert len(tr) == 100
    assert "id-9999" in tr.clients and "id-0" not in tr.clients
    assert tr.evicted == 9_900
    ring = tr.config.fingerprints * SIGNATURE_SIZE * 4  # a full ring of int32 signatures
    assert tr.measure_bytes() < 100 * (ring + 1_000)


def test_rotating_ids_start_suspicious():
    """Many new ids in a short time: each new id starts with the churn threat (never below 0)."""
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    threats = []
    for i in range(500):
        clock.t += 0.005
        threats.append(tr.observe(f"sybil-{i}", rows(1, i)))
    assert min(threats) >= 0.0
    assert threats[-1] > 0.5


def test_idle_ids_are_swept_without_returning():
    """The TTL is applied by a sweep on every call, not only when the same id comes back."""
    clock = Clock()
    tr = ThreatTracker(AdaptiveConfig(ttl_s=10), clock=clock)
    for i in range(50):
        clock.t += 0.01
        tr.observe(f"idle-{i}", rows(1, i))
    assert len(tr) == 50
    clock.t += 5
    tr.observe("fresh", rows(1, 0))
    assert len(tr) == 51
    clock.t += 6  # the 50 idle ids are now past the TTL; "fresh" is not
    tr.observe("another", rows(1, 1))
    assert set(tr.clients) == {"fresh", "another"} and tr.expired == 50


def test_one_callers_traffic_does_not_change_an_established_callers_threat():
    """The first round shared state between young ids and anonymous traffic: a caller at 1 row/s
    went from threat 0 to 0.42 because another caller sent 150 rows/s. Established ids are now
    independent of everyone else's traffic (anonymous, other ids, new ids)."""
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    for i in range(40):  # alice establishes herself at 1 row/s
        clock.t += 1.0
        tr.observe("alice", rows(1, i))
    alone = ThreatTracker(clock=Clock())
    alone.load_state_dict(tr.state_dict())
    alone.clock = clock
    for i in range(300):  # a flood: anonymous, and many new ids, 150 rows/s
        clock.t += 1 / 150
        tr.observe(ANONYMOUS, rows(1, 1000 + i))
        tr.observe(f"new-{i}", rows(1, 2000 + i))
    clock.t += 1.0
    assert tr.observe("alice", rows(1, 99)) == alone.observe("alice", rows(1, 99)) == 0.0


def test_anonymous_rows_are_never_below_a_young_id():
    clock = Clock()
    cfg = AdaptiveConfig()
    tr = ThreatTracker(cfg, clock=clock)
    for i in range(100):
        clock.t += 1.0
        assert tr.observe(ANONYMOUS, rows(1, i)) >= cfg.young_threat


def test_ttl_expires_entries():
    clock = Clock()
    tr = ThreatTracker(AdaptiveConfig(ttl_s=10), clock=clock)
    for i in range(300):
        clock.t += 0.002
        tr.observe("x", rows(1, i))
    clock.t += 11
    assert tr.observe("x", rows(1, 1)) == tr.config.young_threat  # a fresh start: the burst is forgotten


def test_state_dict_round_trip():
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    for i in range(50):
        clock.t += 0.01
        tr.observe(f"c{i % 5}", rows(2, i))
    clone = ThreatTracker(clock=clock)
    clone.load_state_dict(tr.state_dict())
    clock.t += 0.01
    assert tr.observe("c1", rows(1, 7)) == clone.observe("c1", rows(1, 7))


def test_signatures_flag_edited_repeats(encoder_signatures):
    base = "the film is a warm and funny story about a family"
    probes = [base, base + " indeed", base.replace("warm", "kind"), "a completely different dull plot"]
    clock = Clock()
    tr = ThreatTracker(clock=clock)
    threat = 0.0
    for i in range(60):
        clock.t += 1.0
        threat = tr.observe("editor", rows(1, i), encoder_signatures([probes[i % 3]]))
    assert threat > 0.5
    calm = ThreatTracker(clock=clock)
    words = [w for w in packaged_minilm().joinpath("vocab.txt").read_text().split() if w.isalpha() and len(w) > 3]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words[:3000], 8)) for _ in range(60)]  # distinct 8-word sentences
    threats = []
    for k, t in enumerate(texts):
        clock.t += 1.0
        threats.append(calm.observe("reader", rows(1, k), encoder_signatures([t])))
    assert max(threats) < 0.5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (5, "must be a string"),
        ("x" * 10_000, "longer than"),
        ("a\x00b", "control characters"),
    ],
)
def test_bad_client_ids(raw, message):
    with pytest.raises(ValueError, match=message):
        normalise_client_id(raw, max_bytes=256)


def test_missing_client_id_is_anonymous():
    assert normalise_client_id(None, max_bytes=256) == ANONYMOUS


def test_crops_of_one_text_raise_the_threat_and_distinct_texts_do_not(tmp_path):
    """Crops (a third of a text's words) are not near-duplicates of each other, but each is mostly
    contained in the crops before it: a caller sending them at 1 row/s is pushed to threat ~1. The
    same caller sending distinct texts on one topic (sharing only common words) stays at 0 once
    it is no longer young."""
    import shutil

    from veil.export.crops import crops
    from veil.python_backend.tokens import write_common_tokens

    tok = tmp_path / "tok"
    shutil.copytree(packaged_minilm(), tok)
    words = [w for w in packaged_minilm().joinpath("vocab.txt").read_text().split() if w.isalpha() and len(w) > 3]
    rng = np.random.default_rng(1)
    glue = ["the", "a", "of", "and", "is", "to", "in", "that", "it", "with", "as", "for", "this"]
    texts = [" ".join(rng.permutation([*rng.choice(words[:4000], 12), *glue])) for _ in range(120)]
    write_common_tokens(tok, texts[60:], max_length=64)  # the "training texts": the glue words come out on top
    enc = TextEncoder(tok, input_names=["input_ids", "attention_mask"], max_length=64)
    clock = Clock()
    prober, reader = ThreatTracker(clock=clock), ThreatTracker(clock=clock)
    probing = [c for t in texts[:8] for c in crops(t, 8, 0.3, "subset")]
    sig = enc(probing)["fingerprint"]
    threats = []
    for i in range(len(probing)):
        clock.t += 1.0
        threats.append(prober.observe("prober", rows(1, i), sig[i : i + 1]))
    assert threats[-1] > 0.9
    sig = enc(texts[:60])["fingerprint"]
    calm = []
    for i in range(60):
        clock.t += 1.0
        calm.append(reader.observe("reader", rows(1, i), sig[i : i + 1]))
    assert max(calm[40:]) == 0.0


def test_crops_interleaved_over_30_texts_reach_label_only_level(tmp_path):
    """A caller sending third-crops of 30 texts round-robin: the served ring (128 rows: four
    earlier crops of each text) and ramp (chosen on the development seed, ``python -m
    veil.privacy.tune_adaptive``) push most of its rows to the label-only level (threat > 11/12),
    where a 32-row ring (one earlier crop of each) with the ramp (0.1, 0.5) left almost all of
    them short of it."""
    import shutil
    from dataclasses import replace

    from veil.export.crops import crops
    from veil.privacy.probe_crops import replay_threats, stream_order
    from veil.python_backend.tokens import write_common_tokens

    tok = tmp_path / "tok"
    shutil.copytree(packaged_minilm(), tok)
    words = [w for w in packaged_minilm().joinpath("vocab.txt").read_text().split() if w.isalpha() and len(w) > 3]
    rng = np.random.default_rng(2)
    glue = ["the", "a", "of", "and", "is", "to", "in", "that", "it", "with", "as", "for", "this"]
    texts = [" ".join(rng.permutation([*rng.choice(words[:4000], 6), *glue[:6]])) for _ in range(120)]
    write_common_tokens(tok, texts, max_length=64)
    enc = TextEncoder(tok, input_names=["input_ids", "attention_mask"], max_length=64)
    sig = enc([c for t in texts for c in crops(t, 8, 0.3, "subset")])["fingerprint"]
    order = stream_order(len(texts), 8, interleave=30, seed=0)
    now = replay_threats(sig, order)
    before = replay_threats(
        sig, order, replace(AdaptiveConfig(), fingerprints=32, duplicate_low=0.1, duplicate_high=0.5)
    )
    print(f"\nrows at label-only: {(now > 11 / 12).mean():.2f} (before {(before > 11 / 12).mean():.2f})")
    assert (now > 11 / 12).mean() > 0.6
    assert (before > 11 / 12).mean() < 0.1
