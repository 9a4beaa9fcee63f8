from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_curve

from veil.python_backend.leakage import (
    best_threshold_accuracy,
    classwise_threshold_accuracy,
    label_only_floor,
    roc,
    threshold_attack_suite,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.integers(-3, 3).map(float), st.floats(-1e30, 1e30), st.just(-np.inf)), st.booleans()),
        min_size=2,
        max_size=60,
    )
)
def test_roc_is_sklearns_curve_with_every_tied_group(rows):
    """The numpy ROC gives sklearn's points (drop_intermediate=False), ties included (few distinct
    integer scores make large tied groups)."""
    scores = np.array([r[0] for r in rows])
    member = np.array([r[1] for r in rows])
    fpr, tpr = roc(scores, member)
    if member.all() or not member.any():
        assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]
        return
    finite = np.where(np.isinf(scores), -1e300, scores)  # sklearn refuses infinities
    ref_fpr, ref_tpr, _ = roc_curve(member, finite, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-12)


def test_roc_refuses_nan_scores():
    with pytest.raises(ValueError, match="NaN"):
        roc(np.array([0.1, np.nan]), np.array([True, False]))


def test_perfectly_separable_scores():
    scores = np.r_[np.ones(50), np.zeros(50)]
    member = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    assert best_threshold_accuracy(scores, member) == 1.0


def test_identical_distributions_give_about_half():
    rng = np.random.default_rng(0)
    scores = rng.random(20_000)
    member = rng.random(20_000) < 0.5
    assert best_threshold_accuracy(scores, member) == pytest.approx(0.5, abs=0.02)


def test_classwise_beats_global_when_classes_differ():
    # Class 0 members score high, class 1 members score low relative to their class.
    scores = np.r_[np.full(50, 0.9), np.full(50, 0.8), np.full(50, 0.3), np.full(50, 0.2)]
    member = np.r_[np.ones(50, bool), np.zeros(50, bool), np.ones(50, bool), np.zeros(50, bool)]
    groups = np.r_[np.zeros(100), np.ones(100)]
    assert classwise_threshold_accuracy(scores, member, groups) == pytest.approx(1.0)
    assert best_threshold_accuracy(scores, member) < 1.0


def test_ties_share_a_decision():
    scores = np.full(100, 0.5)
    member = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    assert classwise_threshold_accuracy(scores, member, np.zeros(100)) == 0.5


def test_floor_formula():
    assert label_only_floor(np.ones(100, bool), np.r_[np.ones(80, bool), np.zeros(20, bool)]) == pytest.approx(0.6)


def test_suite_on_label_only_outputs_is_the_gap_attack():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    member = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    pred = labels.copy()
    wrong = np.r_[rng.random(200) < 0.02, rng.random(200) < 0.2]
    pred[wrong] = 1 - pred[wrong]
    onehot = np.eye(2)[pred]
    floor = label_only_floor(~wrong[member], ~wrong[~member])
    assert threshold_attack_suite(onehot, labels, member)["loss"] == pytest.approx(floor)
