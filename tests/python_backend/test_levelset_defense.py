from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.python_backend.defense import VARIANTS, Defense, DefenseConfig
from veil.python_backend.probabilities import softmax

from .conftest import make_artifact

LEVELSET = DefenseConfig(variant="levelset")
"""The first round's served defense (adaptive level set); these tests pin its behaviour as an ablation."""

batches = st.tuples(
    st.integers(1, 40),  # rows
    st.integers(2, 20),  # classes
    st.floats(0.1, 30.0),  # logit scale
    st.integers(0, 2**32 - 1),  # seed
)


def draw_logits(rows: int, classes: int, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (rows, classes)) * scale
    z[np.arange(rows), rng.integers(0, classes, rows)] += rng.exponential(scale, rows)
    return z.astype(np.float32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.floats(0.0, 1.0))
def test_veil_invariants(batch, threat):
    rows, classes, scale, seed = batch
    z = draw_logits(rows, classes, scale, seed)
    art = make_artifact(classes)
    defense = Defense(art, config=LEVELSET)
    out = defense(z, threat=np.full(rows, threat))
    inner = defense.levelset
    raw = softmax(z)
    assert out.probabilities.shape == (rows, classes) and out.probabilities.dtype == np.float32
    assert out.labels.shape == (rows,) and out.labels.dtype == np.int64
    assert np.isfinite(out.probabilities).all()
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)
    # The label is kept for every row.
    assert (out.labels == raw.argmax(1)).all()
    assert (out.probabilities.argmax(1) == z.argmax(1)).all()
    # Low-risk rows are returned bit-identical to the raw softmax.
    pred = raw.argmax(1)
    threat_q = round(threat * 100) / 100  # the defense quantises threat to 1/100
    target = inner.score_tau[pred] - inner.target_shift[pred] * threat_q
    untouched = ~out.perturbed
    assert (out.probabilities[untouched] == raw[untouched]).all()
    assert (np.log(out.risk_before[untouched] / (1 - out.risk_before[untouched])) <= target[untouched] + 1e-4).all()
    # Perturbed rows that converged are below the (client's) risk target.
    done = out.perturbed & ~out.exhausted
    assert (out.risk_after[done] <= art.thresholds(pred[done]) + 1e-6).all()
    # Budgets hold (the label constraint may exceed them only for near-ties, never seen here).
    assert (out.budget_use[done] <= 1.0 + 1e-3 + 0.02 / art.eps).all()


@settings(max_examples=25, deadline=None)
@given(batches, st.sampled_from(VARIANTS))
def test_every_variant_keeps_label_and_is_deterministic(batch, variant):
    rows, classes, scale, seed = batch
    z = draw_logits(rows, classes, scale, seed)
    defense = Defense(make_artifact(classes), config=DefenseConfig(variant=variant))
    a = defense(z, threat=np.zeros(rows))
    b = defense(z.copy(), threat=np.zeros(rows))
    assert (a.probabilities == b.probabilities).all()
    assert (a.labels == z.argmax(1)).all()
    assert np.isfinite(a.probabilities).all()
    np.testing.assert_allclose(a.probabilities.sum(1), 1.0, atol=1e-5)


def test_high_risk_row_is_perturbed_and_low_risk_row_is_not():
    art = make_artifact(2)
    out = Defense(art, config=LEVELSET)(np.array([[9.0, -3.0], [0.05, 0.0]], np.float32), threat=np.zeros(2))
    assert out.perturbed.tolist() == [True, False]
    assert out.probabilities[0].max() < softmax(np.array([[9.0, -3.0]], np.float32))[0].max()
    assert out.risk_after[0] < art.thresholds(out.labels)[0] < out.risk_before[0]


def test_result_does_not_depend_on_batch_neighbours():
    art = make_artifact(4)
    z = draw_logits(32, 4, 5.0, 7)
    whole = Defense(art, config=LEVELSET)(z, threat=np.zeros(32)).probabilities
    single = np.concatenate(
        [Defense(art, config=LEVELSET)(z[i : i + 1], threat=np.zeros(1)).probabilities for i in range(32)]
    )
    np.testing.assert_allclose(whole, single, atol=2e-6)


def test_higher_threat_perturbs_more():
    art = make_artifact(2)
    z = draw_logits(200, 2, 4.0, 3)
    calm = Defense(art, config=LEVELSET)(z, threat=np.zeros(200))
    hot = Defense(art, config=LEVELSET)(z, threat=np.ones(200))
    assert hot.perturbed.sum() >= calm.perturbed.sum()
    assert hot.probabilities.max(1).mean() < calm.probabilities.max(1).mean()


def test_memguard_ignores_threat():
    art = make_artifact(2)
    z = draw_logits(50, 2, 4.0, 5)
    d = Defense(art, config=DefenseConfig(variant="memguard"))
    assert (d(z, threat=np.zeros(50)).probabilities == d(z, threat=np.ones(50)).probabilities).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_rejected(bad):
    z = np.array([[1.0, 2.0], [bad, 0.0]], np.float32)
    with pytest.raises(ValueError, match=r"non-finite logits .* row\(s\) \[1\]"):
        Defense(make_artifact(2), config=LEVELSET)(z)


def test_wrong_class_count_is_rejected():
    with pytest.raises(ValueError, match="expected 2 logits per row, got 3"):
        Defense(make_artifact(2), config=LEVELSET)(np.zeros((1, 3), np.float32))


def test_empty_batch():
    out = Defense(make_artifact(2), config=LEVELSET)(np.zeros((0, 2), np.float32))
    assert out.probabilities.shape == (0, 2)


def test_label_only_and_none():
    z = draw_logits(10, 3, 3.0, 1)
    art = make_artifact(3)
    onehot = Defense(art, config=DefenseConfig(variant="label_only"))(z).probabilities
    assert (onehot == np.eye(3, dtype=np.float32)[z.argmax(1)]).all()
    none = Defense(art, config=DefenseConfig(variant="none"))(z).probabilities
    assert (none == softmax(z)).all()


def test_perturbed_outputs_collapse_onto_the_level_set():
    """Binary: perturbed rows of one predicted class land on a few outputs (the level set crossed
    first, snapped to the grid), not on a spread that keeps a trace of their starting point."""
    art = make_artifact(2, tau_quantile=0.3)
    z = draw_logits(300, 2, 6.0, 11)
    out = Defense(art, config=DefenseConfig(variant="levelset"))(z)
    for c in (0, 1):
        sel = out.perturbed & ~out.exhausted & (out.labels == c)
        assert sel.sum() > 20
        _, counts = np.unique(out.probabilities[sel, c], return_counts=True)
        assert np.sort(counts)[-3:].sum() >= 0.8 * sel.sum()
        assert len(np.unique(z[sel, 0] - z[sel, 1])) == sel.sum()  # they started all different


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown defense variant"):
        DefenseConfig(variant="nope")


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 60),
    st.floats(0.1, 25.0),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
    st.sampled_from(["levelset", "memguard"]),
)
def test_binary_closed_form_matches_pgd(rows, scale, seed, threat, variant):
    art = make_artifact(2)
    z = draw_logits(rows, 2, scale, seed)
    fast = Defense(art, config=DefenseConfig(variant=variant))
    slow = Defense(art, config=DefenseConfig(variant=variant, closed_form_binary=False))
    assert fast.levelset.margins is not None and slow.levelset.margins is None
    a, b = fast(z, threat=np.full(rows, threat)), slow(z, threat=np.full(rows, threat))
    assert (a.labels == b.labels).all()
    same = ~a.exhausted & ~b.exhausted
    assert (a.perturbed[same] == b.perturbed[same]).all()
    margin = lambda p: np.log(p.max(1)) - np.log(p.min(1))  # noqa: E731
    # The closed form is the exact level-set point; PGD stops within its tolerance below it, so it
    # may move a little further (never less, beyond one 0.01 output-grid step).
    assert (margin(a.probabilities[same]) >= margin(b.probabilities[same]) - 0.011).all()
    np.testing.assert_allclose(a.risk_after[same], b.risk_after[same], atol=5e-3)
    np.testing.assert_allclose(a.risk_before, b.risk_before, atol=1e-3)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(2, 40),
    st.floats(0.1, 25.0),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
    st.sampled_from(["levelset", "memguard"]),
)
def test_single_row_path_matches_the_batch_path(rows, scale, seed, threat, variant):
    """Batch size 1 takes a plain-Python path; it must give the batch path's answer bit for bit."""
    defense = Defense(make_artifact(2), config=DefenseConfig(variant=variant))
    z = draw_logits(rows, 2, scale, seed)
    batch = defense(z, threat=np.full(rows, threat))
    for i in range(rows):
        one = defense(z[i : i + 1], threat=np.full(1, threat))
        assert (one.probabilities[0] == batch.probabilities[i]).all()
        assert one.labels[0] == batch.labels[i] and one.perturbed[0] == batch.perturbed[i]
        assert one.exhausted[0] == batch.exhausted[i]
        assert one.risk_before[0] == pytest.approx(batch.risk_before[i], abs=1e-9)
        assert one.risk_after[0] == pytest.approx(batch.risk_after[i], abs=1e-9)


def test_multiclass_outputs_are_the_canonical_point_of_their_class():
    """More than two classes: a perturbed row at full budget is served the canonical point of its
    class (label at the level, uniform tail), bit-identical for every input, so a caller learns
    the label and nothing else; PGD's minimal-delta points would keep a trace of the input."""
    art = make_artifact(4, tau_quantile=0.3)
    z = draw_logits(400, 4, 6.0, 12)
    out = Defense(art, config=DefenseConfig(variant="levelset"))(z)
    assert (out.labels == z.argmax(1)).all()
    for c in range(4):
        sel = out.perturbed & ~out.exhausted & (out.labels == c)
        assert sel.sum() > 20
        assert len(np.unique(out.probabilities[sel], axis=0)) == 1
        tail = np.delete(out.probabilities[sel][0], c)
        assert (tail == tail[0]).all()
    pgd = Defense(art, config=DefenseConfig(variant="levelset", canonical_multiclass=False))(z)
    assert (pgd.labels == z.argmax(1)).all()
    sel = pgd.perturbed & (pgd.labels == 0)
    assert len(np.unique(pgd.probabilities[sel], axis=0)) > 1


def test_multiclass_budget_is_respected_along_the_line():
    art = make_artifact(5, tau_quantile=0.3)
    z = draw_logits(200, 5, 8.0, 13)
    d = Defense(art, config=DefenseConfig(variant="levelset"))
    out = d(z, eps_scale=0.3)
    assert out.exhausted.any()
    assert (out.labels == z.argmax(1)).all()
    moved = out.perturbed
    shifted = out.delta[moved] - (out.delta[moved].max(1, keepdims=True) + out.delta[moved].min(1, keepdims=True)) / 2
    assert (np.abs(shifted).max(1) <= 0.3 + 1e-4).all()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(-1e4, 1e4), st.sampled_from(["levelset", "memguard"]))
def test_moved_rows_bytes_do_not_depend_on_the_logits_offset(seed, offset, variant):
    """Two classes: a moved row is served from (label, new margin) alone; the same decision under
    a common offset of the logits gives the same bytes (the first round leaked the offset's float32
    rounding into perturbed outputs)."""
    d = Defense(make_artifact(2), config=DefenseConfig(variant=variant))
    z = draw_logits(64, 2, 5.0, seed)
    shifted = (z.astype(np.float64) + offset).astype(np.float32)
    a, b = d(z), d(shifted)
    moved = a.perturbed & b.perturbed & ~a.exhausted & ~b.exhausted
    assert moved.any()
    # The same decision needs the same input margin: float32 rounding of a large offset can change
    # a row's margin itself (offset 8190 did), and then a different served point is right.
    same = moved & (np.diff(z.astype(np.float64)) == np.diff(shifted.astype(np.float64))).ravel()
    assert (a.probabilities[same] == b.probabilities[same]).all()
    one = [d(shifted[i : i + 1]).probabilities[0] for i in np.flatnonzero(moved)[:5]]
    assert all((o == b.probabilities[i]).all() for o, i in zip(one, np.flatnonzero(moved)[:5], strict=True))
