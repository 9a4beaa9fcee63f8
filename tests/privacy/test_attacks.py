"""The attacks on synthetic outputs with known answers, including a planted float32 side channel."""

from __future__ import annotations

import numpy as np
import pytest

from veil.privacy.attacks import (
    Outputs,
    floor,
    label_lira_score,
    lira_score,
    loss_score,
    modified_entropy_score,
    phi,
    suite,
)
from veil.privacy.metrics import cross_fitted, realistic, threshold_fit


def outputs(conf: np.ndarray, *, seed: int = 0) -> Outputs:
    """Binary outputs whose true-class probability is ``conf``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, len(conf))
    p = np.zeros((len(conf), 2))
    p[np.arange(len(conf)), labels] = conf
    p[np.arange(len(conf)), 1 - labels] = 1 - conf
    return Outputs(p, labels)


def membership(n: int) -> np.ndarray:
    return np.r_[np.ones(n, bool), np.zeros(n, bool)]


def test_scores_do_not_saturate_near_one():
    # float32 can hold 1 - 2^-24 ... the distinct served values must keep distinct scores.
    conf = np.array([1 - 2**-10, 1 - 2**-16, 1 - 2**-20, 1 - 2**-24], dtype=np.float32)
    o = outputs(conf.astype(np.float64))
    for s in (phi(o), loss_score(o), modified_entropy_score(o)):
        assert np.all(np.diff(s) > 0)


def test_separable_case_is_found_at_both_strengths():
    rng = np.random.default_rng(0)
    member = membership(300)
    o = outputs(np.r_[rng.uniform(0.95, 0.99, 300), rng.uniform(0.55, 0.8, 300)])
    shadow = outputs(np.r_[rng.uniform(0.95, 0.99, 300), rng.uniform(0.55, 0.8, 300)], seed=1)
    for name, fit in suite(lira=False, blind=False).items():
        if name == "gap":
            continue
        assert realistic(name, fit, shadow, member, o, member).accuracy > 0.95, name
        assert cross_fitted(name, fit, o, member).accuracy > 0.95, name


def test_identical_distributions_give_about_half():
    rng = np.random.default_rng(0)
    member = membership(1000)
    o = outputs(rng.uniform(0.5, 1, 2000))
    for name, fit in suite(lira=False, blind=False).items():
        e = cross_fitted(name, fit, o, member)
        assert abs(e.accuracy - 0.5) < 0.04 and e.tpr_1 < 0.04, name


def test_floor_and_gap_attack():
    # members all correct; 30% of non-members wrong: floor = 0.5 + (1 - 0.7) / 2 = 0.65
    o = outputs(np.r_[np.full(100, 0.9), np.full(70, 0.9), np.full(30, 0.2)])
    member = membership(100)
    assert floor(o, member) == pytest.approx(0.65)
    gap = realistic("gap", suite(lira=False, blind=False)["gap"], o, member, o, member)
    assert gap.accuracy == pytest.approx(0.65)


def test_lira_offline_finds_per_example_shifts():
    rng = np.random.default_rng(3)
    n = 400
    member = membership(n // 2)
    difficulty = rng.normal(0, 2, n)  # per-example offset that confuses global thresholds
    target_phi = difficulty + np.where(member, 1.0, 0.0) + rng.normal(0, 0.2, n)
    conf = 1 / (1 + np.exp(-target_phi))
    o = outputs(conf)
    o.extra["ref_phi"] = difficulty[:, None] + rng.normal(0, 0.2, (n, 8))
    lira = cross_fitted("lira", threshold_fit(lira_score), o, member)
    glob = cross_fitted("loss", threshold_fit(loss_score), o, member)
    assert lira.auc > 0.95 > 0.8 > glob.auc


def test_label_lira_reads_the_label_with_the_references_difficulty():
    """Members are right on texts the references find hard; non-members right only on easy ones.
    Correctness alone barely separates them; the difficulty-calibrated label does, and it reads
    the same on a one-hot output as on any output with the same labels. Offline LiRA on the one-hot
    output (phi at the float limits, +-708) ranks the right rows by difficulty too but cannot place
    one threshold across right and wrong rows: its accuracy falls well short."""
    rng = np.random.default_rng(5)
    n = 600
    member = membership(n // 2)
    difficulty = rng.normal(0, 2, n)  # the references' logit confidence in the true class
    correct = np.where(member, rng.random(n) < 0.95, rng.random(n) < 1 / (1 + np.exp(-difficulty)))
    labels = rng.integers(0, 2, n)
    pred = np.where(correct, labels, 1 - labels)
    one_hot = np.eye(2)[pred]
    soft = np.where(np.eye(2, dtype=bool)[pred], 0.8, 0.2)
    ref = difficulty[:, None] + rng.normal(0, 0.3, (n, 4))
    ref[:5, :] = np.nan  # a row every reference trained on: the global mean stands in
    runs = {}
    for name, p in (("one_hot", one_hot), ("soft", soft)):
        o = Outputs(p, labels)
        o.extra["ref_phi"] = o.extra["ref_phi_raw"] = ref
        runs[name] = cross_fitted("lira_label", threshold_fit(label_lira_score), o, member)
        np.testing.assert_array_equal(label_lira_score(o)[correct] > 0, True)  # right rows above wrong ones
        assert np.isfinite(label_lira_score(o)).all()
    assert runs["one_hot"].auc == runs["soft"].auc > 0.75
    o = Outputs(one_hot, labels)
    o.extra["ref_phi"] = ref
    assert cross_fitted("lira", threshold_fit(lira_score), o, member).accuracy < runs["one_hot"].accuracy - 0.05


def planted(channel: bool, n: int = 600, seed: int = 0) -> tuple[Outputs, np.ndarray]:
    """Every row's top probability is v or the next float32 above it; with the channel, members get
    the upper value 80% of the time and non-members 20%; without it, 50% each."""
    rng = np.random.default_rng(seed)
    member = rng.permutation(membership(n // 2))
    v = np.float32(0.7)
    up = np.nextafter(v, np.float32(1))
    share = np.where(member, 0.8, 0.2) if channel else np.full(n, 0.5)
    top = np.where(rng.random(n) < share, up, v).astype(np.float32)
    labels = rng.integers(0, 2, n)
    p = np.zeros((n, 2), np.float32)
    p[np.arange(n), labels] = top
    p[np.arange(n), 1 - labels] = np.float32(1) - top
    return Outputs(p, labels), member


def test_float_attack_finds_a_planted_one_ulp_side_channel():
    fit = suite(lira=False, blind=False)["float_hgb"]
    found = np.mean([cross_fitted("f", fit, *planted(True, seed=k), seed=k).accuracy for k in range(3)])
    clean = np.mean([cross_fitted("f", fit, *planted(False, seed=k), seed=k).accuracy for k in range(3)])
    assert found > 0.7  # 0.8 is the Bayes accuracy
    assert abs(clean - 0.5) < 0.04


def test_outputs_refuse_a_row_count_other_than_the_labels():
    """One output per row: a flat [rows * k, C] array of query outputs with [rows] labels would
    make ``take`` pick other rows' outputs (the crop probe's learned attack did until 2026-12-03)."""
    with pytest.raises(ValueError, match="8 outputs for 4 rows"):
        Outputs(np.full((8, 2), 0.5, np.float32), np.zeros(4, np.int64))
