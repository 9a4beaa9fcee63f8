"""Utility metrics: known values and invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from veil.privacy.utility import aurc, brier, ece, error_detection_auroc, nll, rank_agreement, utility


def probs_and_labels(draw, classes):
    n = draw(st.integers(2, 60))
    raw = draw(arrays(np.float64, (n, classes), elements=st.floats(0.01, 1.0)))
    p = raw / raw.sum(1, keepdims=True)
    labels = draw(arrays(np.int64, n, elements=st.integers(0, classes - 1)))
    return p, labels


@st.composite
def outputs(draw):
    return probs_and_labels(draw, draw(st.integers(2, 5)))


@settings(max_examples=60, deadline=None)
@given(outputs())
def test_ranges(pl):
    p, y = pl
    u = utility(p, y, raw=p)
    assert 0 <= u["ece"] <= 1
    assert 0 <= u["error_detection_auroc"] <= 1
    assert 0 <= u["aurc"] <= 1
    assert 0 <= u["brier"] <= 2
    assert u["nll"] >= 0
    assert u["tv_to_raw"] == 0 and u["identical_to_raw"] == 1
    if p.shape[1] > 2:
        assert u["rank_agreement"] == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(outputs())
def test_one_hot_outputs_carry_no_error_ranking(pl):
    p, y = pl
    onehot = np.eye(p.shape[1])[p.argmax(1)]
    assert error_detection_auroc(onehot, y) == pytest.approx(0.5)
    # every confidence is 1: ECE is the error rate
    assert ece(onehot, y) == pytest.approx(float((p.argmax(1) != y).mean()))


def test_perfect_calibration_gives_about_zero_ece():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1, n)
    y = (rng.random(n) >= conf).astype(int)  # label 0 right with probability conf
    p = np.column_stack([conf, 1 - conf])
    assert ece(p, y) < 0.01


def test_known_values():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    y = np.array([0, 1, 1, 0])  # the 0.6 row is wrong
    assert error_detection_auroc(p, y) == pytest.approx(1.0)
    # accepted by confidence 0.9, 0.8, 0.7, 0.6: risks 0, 0, 0, 1/4
    assert aurc(p, y) == pytest.approx(0.25 / 4)
    assert brier(p, y) == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)
    assert nll(p, y) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])))


def test_aurc_ties_take_the_mean_risk():
    p = np.array([[0.7, 0.3]] * 4)
    y = np.array([0, 0, 1, 1])
    assert aurc(p, y) == pytest.approx(0.5)


def test_rank_agreement_and_top2():
    raw = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    flipped = np.array([[0.5, 0.2, 0.3], [0.7, 0.2, 0.1]])
    assert rank_agreement(raw, raw) == pytest.approx(1.0)
    assert rank_agreement(flipped, raw) == pytest.approx((1 / 3 - 1) / 2)
    u = utility(flipped, np.array([1, 1]), raw=raw)
    assert u["top2_accuracy"] == 0.5 and u["distinct_outputs"] == 2 and u["identical_to_raw"] == 0
