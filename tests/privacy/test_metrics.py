"""Low-FPR metrics through ties, and the two attacker strengths, on synthetic scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from veil.privacy.metrics import (
    CROSSFIT_SPLITS,
    MIN_NONMEMBERS_FOR_01,
    Scored,
    auc,
    cross_fitted,
    in_sample_best_accuracy,
    summarise,
    threshold_fit,
    tpr_at_fpr,
)


class Rows:
    """Minimal rows object: a score column and labels."""

    def __init__(self, s: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.s = np.asarray(s, dtype=np.float64)
        self.labels = np.zeros(len(s), int) if labels is None else labels

    def __len__(self) -> int:
        return len(self.s)

    def take(self, idx):
        return Rows(self.s[idx], self.labels[idx])


def test_all_tied_scores_give_tpr_equal_to_fpr():
    member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    s = np.zeros(1000)
    for f in (0.001, 0.01, 0.1, 0.5):
        assert tpr_at_fpr(s, member, f) == pytest.approx(f)
    assert auc(s, member) == pytest.approx(0.5)


def test_interpolation_through_a_tied_group():
    # 100 members, 100 non-members. Top group: 10 members alone at score 3. Next group, tied at 2:
    # 40 members and 20 non-members. Random tie-breaking at FPR 1% takes 1 of the 20 non-members
    # and, in expectation, 2 of the 40 members: TPR = (10 + 2) / 100.
    member = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    s = np.r_[np.full(10, 3.0), np.full(40, 2.0), np.full(50, 0.0), np.full(20, 2.0), np.full(80, 0.0)]
    assert tpr_at_fpr(s, member, 0.01) == pytest.approx(0.12)
    assert tpr_at_fpr(s, member, 0.0) == pytest.approx(0.10)
    assert tpr_at_fpr(s, member, 0.20) == pytest.approx(0.50)
    # counting the tied group all-out would say 0.10 at every FPR below 20%
    assert tpr_at_fpr(s, member, 0.1) == pytest.approx(0.30)


def test_saturated_scores_are_not_reported_as_zero():
    # like norm.cdf(z) == 1.0 for z >= 8.3: the top 20% of members and 2% of non-members tie at 1.0
    member = np.r_[np.ones(1000, bool), np.zeros(1000, bool)]
    rng = np.random.default_rng(0)
    s = np.r_[np.ones(200), rng.uniform(0, 0.9, 800), np.ones(20), rng.uniform(0, 0.9, 980)]
    assert tpr_at_fpr(s, member, 0.01) == pytest.approx(0.10)


def test_tpr_at_01_needs_5000_nonmembers():
    rng = np.random.default_rng(1)
    small = Scored(rng.normal(size=1000), np.zeros(1000, bool), np.r_[np.ones(500, bool), np.zeros(500, bool)])
    assert small.metrics()["tpr_01"] is None
    n = MIN_NONMEMBERS_FOR_01
    big = Scored(rng.normal(size=2 * n), np.zeros(2 * n, bool), np.r_[np.ones(n, bool), np.zeros(n, bool)])
    assert big.metrics()["tpr_01"] is not None


def test_bootstrap_interval_covers_the_estimate():
    rng = np.random.default_rng(2)
    member = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    s = rng.normal(size=800) + member
    e = summarise("x", "realistic", [Scored(s, s >= 0.5, member)], boots=100)
    assert e.accuracy_ci[0] <= e.accuracy <= e.accuracy_ci[1]
    assert e.tpr_1_ci[0] <= e.tpr_1 <= e.tpr_1_ci[1]
    assert 0.6 < e.accuracy < 0.75  # a one-sigma shift: 0.5 + (Phi(0.5) - Phi(-0.5)) / 2 = 0.69


def test_in_sample_best_threshold_flatters_a_continuous_score_but_cross_fitting_does_not():
    # No signal at all: membership is independent of the score. Averaged over 10 draws.
    n, fit = 300, threshold_fit(lambda r: r.s)
    flattering, collapsed, honest = [], [], []
    for k in range(10):
        rng = np.random.default_rng(k)
        member = rng.permutation(np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)])
        continuous = rng.normal(size=n)
        flattering.append(in_sample_best_accuracy(continuous, member))  # best of ~300 thresholds
        collapsed.append(in_sample_best_accuracy(np.zeros(n), member))  # a defense returning one value
        honest.append(cross_fitted("c", fit, Rows(continuous), member, seed=k).accuracy)
    assert np.mean(flattering) > 0.53
    assert np.mean(collapsed) == pytest.approx(0.5)
    assert abs(np.mean(honest) - 0.5) < 0.02
    assert np.mean(flattering) - np.mean(honest) > 0.03


def test_cross_fitted_finds_a_real_signal():
    rng = np.random.default_rng(4)
    member = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    s = rng.normal(size=600) + 2 * member
    e = cross_fitted("c", threshold_fit(lambda r: r.s), Rows(s), member)
    assert e.accuracy > 0.8 and e.auc > 0.9 and len(e.folds) == 2 * CROSSFIT_SPLITS


def test_repeated_halvings_average_out_the_choice_of_halves():
    # The rows are fixed; only the halving (the seed) changes. With no signal, whatever one halving
    # reports is the luck of that halving: the mean over 5 halvings varies far less across seeds.
    rng = np.random.default_rng(9)
    member = rng.permutation(np.r_[np.ones(150, bool), np.zeros(150, bool)])
    rows, fit = Rows(rng.normal(size=300)), threshold_fit(lambda r: r.s)

    def spread(splits: int) -> float:
        return float(
            np.std([cross_fitted("c", fit, rows, member, seed=k, boots=1, splits=splits).accuracy for k in range(30)])
        )

    one, five = spread(1), spread(5)
    assert five < 0.7 * one, (one, five)
