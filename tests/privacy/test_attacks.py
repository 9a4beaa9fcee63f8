"""The attack code on synthetic outputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from veil.privacy.attacks import (
    Outputs,
    blind_attack,
    lira_offline,
    modified_entropy_score,
    run_attacks,
    score_result,
    tpr_at_fpr,
)


def outputs(member_conf: np.ndarray, nonmember_conf: np.ndarray, *, seed: int = 0) -> Outputs:
    """Binary outputs whose true-class probability is the given confidence."""
    rng = np.random.default_rng(seed)
    conf = np.r_[member_conf, nonmember_conf]
    labels = rng.integers(0, 2, len(conf))
    p = np.zeros((len(conf), 2))
    p[np.arange(len(conf)), labels] = conf
    p[np.arange(len(conf)), 1 - labels] = 1 - conf
    member = np.r_[np.ones(len(member_conf), bool), np.zeros(len(nonmember_conf), bool)]
    return Outputs(p, labels, member)


def test_perfectly_separable_case_gives_auc_1():
    o = outputs(np.full(300, 0.99), np.full(300, 0.6))
    shadow = outputs(np.full(300, 0.99), np.full(300, 0.6), seed=1)
    results = {r.name: r for r in run_attacks(o, shadow)}
    for name in ("loss", "classwise_confidence", "classwise_entropy", "classwise_modified_entropy", "neural"):
        assert results[name].auc == pytest.approx(1.0), name
        assert results[name].accuracy == pytest.approx(1.0), name
        assert results[name].tpr_1 == pytest.approx(1.0), name


def test_identical_distributions_give_about_half():
    rng = np.random.default_rng(0)
    o = outputs(rng.uniform(0.5, 1, 2000), rng.uniform(0.5, 1, 2000))
    shadow = outputs(rng.uniform(0.5, 1, 2000), rng.uniform(0.5, 1, 2000), seed=2)
    for r in run_attacks(o, shadow):
        assert r.auc == pytest.approx(0.5, abs=0.04), r.name
        assert r.accuracy == pytest.approx(0.5, abs=0.04), r.name
        assert r.tpr_1 < 0.04, r.name


def test_floor_and_gap_attack():
    # members all correct; 30% of non-members wrong: floor = 0.5 + (1 - 0.7) / 2 = 0.65
    o = outputs(np.full(100, 0.9), np.r_[np.full(70, 0.9), np.full(30, 0.2)])
    assert o.floor() == pytest.approx(0.65)
    gap = run_attacks(o, o)[0]
    assert gap.name == "gap" and gap.accuracy == pytest.approx(0.65)


def test_lira_offline_finds_per_example_shifts():
    rng = np.random.default_rng(3)
    n = 400
    difficulty = rng.normal(0, 2, n)  # per-example offset that confuses global thresholds
    member = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    target_phi = difficulty + np.where(member, 1.0, 0.0) + rng.normal(0, 0.2, n)
    refs = difficulty[None, :] + rng.normal(0, 0.2, (8, n))
    lira = score_result("lira", lira_offline(target_phi, refs), member)
    glob = score_result("global", target_phi, member)
    assert lira.auc > 0.95 > glob.auc


def test_modified_entropy_prefers_confident_correct():
    o = outputs(np.array([0.99, 0.6]), np.array([0.3]))
    s = modified_entropy_score(o)
    assert s[0] > s[1] > s[2]


def test_tpr_at_fpr():
    scores = np.r_[np.arange(100), np.arange(100) - 50.5]
    member = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    assert tpr_at_fpr(scores, member, 0.01) == pytest.approx(0.52)  # t = 48: one non-member (48.5) above
    assert tpr_at_fpr(scores, member, 0.0) == pytest.approx(0.51)  # t = 49


def test_blind_attack_on_random_split_is_near_half():
    rng = np.random.default_rng(0)
    words = ["a", "film", "good", "bad", "the", "plot", ",", "very"]
    texts = [" ".join(rng.choice(words, rng.integers(2, 12))) for _ in range(2000)]
    member = rng.random(2000) < 0.5
    scores = blind_attack(texts[:1000], member[:1000], texts[1000:])
    assert score_result("blind", scores, member[1000:]).auc == pytest.approx(0.5, abs=0.05)
