"""The strongest attack chosen on one half and reported on the other."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from veil.privacy.summary import selected_strongest, strongest

UB = "upper_bound"


def _rows(folds: dict[str, tuple[float, float]]) -> dict[str, dict]:
    return {k: {UB: {"accuracy": float(np.mean(f)), "fold_accuracy": list(f)}} for k, f in folds.items()}


def test_a_lucky_half_does_not_win():
    # "lucky" is far ahead on half 0 only; "steady" is good on both. The max of the means picks
    # lucky; choosing on one half and reporting on the other reports what each choice gets elsewhere.
    rows = _rows({"lucky": (0.70, 0.50), "steady": (0.60, 0.60)})
    assert strongest(rows, UB)[0] == "lucky"
    # chosen on half 0: lucky, reported on half 1 (0.50); chosen on half 1: steady, reported on half 0 (0.60)
    assert selected_strongest(rows, UB, rows) == 0.55


def test_without_halves_there_is_no_selection():
    rows = {"a": {UB: {"accuracy": 0.6}}}
    assert selected_strongest(rows, UB, rows) is None


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=20))
def test_never_above_the_maximum_of_the_means(folds):
    rows = _rows({f"a{i}": f for i, f in enumerate(folds)})
    chosen = selected_strongest(rows, UB, rows)
    assert chosen <= strongest(rows, UB)[1]["accuracy"] + 1e-12
    assert chosen >= min(min(f) for f in folds) - 1e-12
