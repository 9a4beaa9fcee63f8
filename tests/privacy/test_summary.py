"""The strongest attack chosen on one half and reported on the other."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from veil.privacy.summary import selected_strongest, strongest

UB = "upper_bound"


def _rows(folds: dict[str, tuple[float, ...]]) -> dict[str, dict]:
    return {k: {UB: {"accuracy": float(np.mean(f)), "fold_accuracy": list(f)}} for k, f in folds.items()}


def test_a_lucky_half_does_not_win():
    # "lucky" is far ahead on half 0 only; "steady" is good on both. The max of the means picks
    # lucky; choosing on one half and reporting on the other reports what each choice gets elsewhere.
    rows = _rows({"lucky": (0.70, 0.50), "steady": (0.60, 0.60)})
    assert strongest(rows, UB)[0] == "lucky"
    # chosen on half 0: lucky, reported on half 1 (0.50); chosen on half 1: steady, reported on half 0 (0.60)
    assert selected_strongest(rows, UB, rows) == 0.55


def test_each_halving_chooses_on_its_own_halves():
    # Two halvings (folds 0,1 and 2,3). "lucky" wins fold 0 only; "steady" wins the rest. Picks:
    # fold 0 -> lucky, reported on fold 1 (0.50); fold 1 -> steady on fold 0 (0.60);
    # fold 2 -> steady on fold 3 (0.62); fold 3 -> steady on fold 2 (0.58).
    rows = _rows({"lucky": (0.70, 0.50, 0.55, 0.55), "steady": (0.60, 0.60, 0.58, 0.62)})
    assert selected_strongest(rows, UB, rows) == np.mean([0.50, 0.60, 0.62, 0.58])


def test_unpaired_or_mismatched_folds_give_no_selection():
    assert selected_strongest(_rows({"a": (0.6, 0.5, 0.7)}), UB, ["a"]) is None
    assert selected_strongest(_rows({"a": (0.6, 0.5), "b": (0.6, 0.5, 0.5, 0.6)}), UB, ["a", "b"]) is None


def test_without_halves_there_is_no_selection():
    rows = {"a": {UB: {"accuracy": 0.6}}}
    assert selected_strongest(rows, UB, rows) is None


@given(st.integers(1, 4).flatmap(lambda h: st.lists(st.tuples(*[st.floats(0, 1)] * (2 * h)), min_size=1, max_size=20)))
def test_never_above_the_maximum_of_the_means(folds):
    # Within a halving, the pick is at most the best attack's mean over that halving's two folds;
    # over halvings, at most the mean of those per-halving maxima.
    rows = _rows({f"a{i}": f for i, f in enumerate(folds)})
    chosen = selected_strongest(rows, UB, rows)
    f = np.asarray(folds, float)
    per_halving_best = (f[:, 0::2] + f[:, 1::2]).max(0) / 2
    assert chosen <= per_halving_best.mean() + 1e-12
    assert chosen >= f.min() - 1e-12


def test_selected_needs_a_value_on_every_half():
    from veil.privacy.summary import selected

    assert selected({"a": [0.6, 0.5], "b": [0.7, 0.4]}) == np.mean([0.4, 0.6])
    assert selected({"a": [0.6, None], "b": [0.7, 0.4]}) is None
