"""The LiRA ablation's own measures (the development-seed run itself is in docs/evaluation.md)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy.ablate_lira import class_log_odds_rows, group_ranks, lira_readings
from veil.python_backend.probabilities import softmax64


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_group_ranks_are_uniform_within_each_group(n, groups, seed):
    rng = np.random.default_rng(seed)
    value, group = rng.normal(size=n), rng.integers(0, groups, n)
    u = group_ranks(value, group)
    assert ((u > 0) & (u < 1)).all()
    for g in np.unique(group):
        rows = group == g
        np.testing.assert_allclose(np.sort(u[rows]), (np.arange(rows.sum()) + 0.5) / rows.sum())
        assert (np.argsort(np.argsort(u[rows])) == np.argsort(np.argsort(value[rows], kind="stable"))).all()


def test_class_log_odds_rows_is_each_rows_own_class():
    z = np.random.default_rng(0).normal(0, 3, (50, 4))
    label = np.arange(50) % 4
    p = softmax64(z)[np.arange(50), label]
    # softmax64 rounds its input to float32
    np.testing.assert_allclose(class_log_odds_rows(z, label), np.log(p / (1 - p)), atol=1e-5)


def _outputs(n: int, shift: float, seed: int):
    """Two-class outputs whose members sit ``shift`` log-odds above what the (OUT) references give."""
    rng = np.random.default_rng(seed)
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    difficulty = rng.normal(0, 2, 2 * n)
    labels = np.zeros(2 * n, np.int64)

    def probs(s):
        return np.column_stack([1 / (1 + np.exp(-s)), 1 - 1 / (1 + np.exp(-s))])

    target = probs(difficulty + shift * member + 0.3 * rng.normal(size=2 * n))
    refs = [probs(difficulty + 0.3 * rng.normal(size=2 * n)) for _ in range(4)]
    return member, target, labels, refs


def test_lira_reads_a_per_example_shift_and_nothing_without_one():
    """A member shifted against its own references (but not against the population: difficulty
    spreads far wider) is found; no shift reads chance."""
    member, target, labels, refs = _outputs(1000, 1.5, seed=1)
    acc, auc, tpr = lira_readings(member, target, labels, refs, seed=0)
    assert acc > 85 and auc > 90 and tpr > 20
    member, target, labels, refs = _outputs(1000, 0.0, seed=2)
    acc, auc, tpr = lira_readings(member, target, labels, refs, seed=0)
    assert abs(acc - 50) < 3 and abs(auc - 50) < 4 and tpr < 5
