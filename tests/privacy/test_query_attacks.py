"""Query-attack building blocks: seeded edits, aggregation, non-determinism detection."""

from __future__ import annotations

import numpy as np
import pytest

from veil.privacy.attacks import Outputs
from veil.privacy.metrics import cross_fitted
from veil.privacy.query_attacks import augmentation_features, augmentation_suite, edits, expand, repeat_features


def test_edits_are_seeded_word_level_and_distinct_from_the_text():
    t = "the film was very good and rather moving"
    a = edits(t, 6, seed=1)
    assert a == edits(t, 6, seed=1) and a != edits(t, 6, seed=2)
    assert len(a) == 6 and all(e != t for e in a)
    n = len(t.split())
    assert [len(e.split()) - n for e in a] == [-1, 0, 1, -1, 0, 1]
    flat, group = expand([t, "good"], 6, seed=0)
    assert len(flat) == 12 and list(group) == [0] * 6 + [1] * 6


def test_augmentation_aggregates_and_attack():
    # members keep their label on every edit, non-members on 4 of 6
    rng = np.random.default_rng(0)
    n, k = 200, 6
    member = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    labels = rng.integers(0, 2, n)
    keep = np.where(member[:, None], True, rng.random((n, k)) < 0.66).reshape(-1)
    rows = np.repeat(labels, k)
    pred = np.where(keep, rows, 1 - rows)
    probs = np.eye(2, dtype=np.float32)[pred]  # label-only outputs
    f = augmentation_features(probs, labels, k)
    assert f["aug_keep"][: n // 2] == pytest.approx(1.0)
    o = Outputs(np.eye(2, dtype=np.float32)[labels], labels, f)
    e = cross_fitted("aug_keep", augmentation_suite()["aug_keep"], o, member)
    assert e.accuracy > 0.85


def test_repeats_flag_nondeterministic_outputs():
    labels = np.array([0, 1])
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.31, 0.69]], np.float32)
    feats, differ = repeat_features(p, labels, 2)
    assert differ == 1 and feats["rep_spread"][0] == 0
