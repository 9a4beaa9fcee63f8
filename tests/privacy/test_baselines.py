"""Baselines: exact, deterministic, label-preserving functions of the raw probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from veil.privacy.baselines import baselines, clamp, class_precision, hamp, round_one_decimal


@st.composite
def raw(draw):
    c = draw(st.integers(2, 5))
    n = draw(st.integers(1, 30))
    x = draw(arrays(np.float64, (n, c), elements=st.floats(1e-6, 1.0)))
    p = (x / x.sum(1, keepdims=True)).astype(np.float32)
    # a unique argmax, as the served softmax has for real inputs
    keep = np.sort(p, 1)[:, -1] > np.sort(p, 1)[:, -2] if c > 1 else np.ones(n, bool)
    return p[keep] if keep.any() else np.eye(c, dtype=np.float32)[:1]


@settings(max_examples=60, deadline=None)
@given(raw())
def test_every_baseline_keeps_the_label_sums_to_one_and_is_deterministic(p):
    c = p.shape[1]
    for b in baselines(c, np.full(c, 0.8)):
        q = b.transform(p)
        assert q.dtype == np.float32 and q.shape == p.shape, b.name
        assert np.all(q.argmax(1) == p.argmax(1)), b.name
        assert np.allclose(q.sum(1), 1, atol=1e-5), b.name
        assert np.array_equal(q, b.transform(p)), b.name


def test_clamp_caps_the_top():
    q = clamp(0.7)(np.array([[0.9, 0.1], [0.6, 0.4]], np.float32))
    assert q[0] == pytest.approx([0.7, 0.3]) and q[1] == pytest.approx([0.6, 0.4])


def test_clamp_on_many_classes_keeps_the_order_and_caps_the_top_monotonically():
    p = np.random.default_rng(0).dirichlet(np.full(4, 0.3), size=500).astype(np.float32)
    q = clamp(0.4)(p)
    assert np.array_equal(np.argsort(-q, 1, kind="stable"), np.argsort(-p, 1, kind="stable"))
    assert q.max(1) == pytest.approx(np.minimum(p.max(1), 0.4), abs=1e-6)


def test_round_and_hamp():
    assert round_one_decimal(np.array([[0.52, 0.48]], np.float32))[0] == pytest.approx([0.6, 0.4])
    assert round_one_decimal(np.array([[0.13, 0.81, 0.06]], np.float32))[0] == pytest.approx([0.1, 0.8, 0.1])
    q = hamp(0.4)(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32))
    assert q[0] == pytest.approx(q[1][[1, 0, 2]])  # one template, placed by rank
    assert q[0].max() == pytest.approx(0.4)


def test_class_precision():
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    assert class_precision(p, np.array([0, 1, 1]), 2) == pytest.approx([0.5, 1.0])
