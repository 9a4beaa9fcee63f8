"""The floor ablation's maps: weighted (equal weights reproduce the served tables, zero weights drop
rows), ranked (strata tile the non-members' quantiles) and conditional (each stratum on its own)."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy.ablate_floor import (
    DEFENDER_EDITS,
    STRATA,
    conditional_tables,
    near_defender,
    near_tables,
    ranked_tables,
    stability_tables,
    strata,
    strongest_excess,
    weighted_quantiles,
)
from veil.python_backend import selective
from veil.python_backend.fingerprint import SIGNATURE_SIZE, minhash, sketch
from veil.python_backend.member_index import MemberIndex

VALUES = st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=60)


@settings(max_examples=80, deadline=None)
@given(x=VALUES, scale=st.floats(0.1, 10))
def test_equal_weights_are_numpys_quantiles(x, scale):
    x = np.asarray(x)
    got = weighted_quantiles(x, np.full(len(x), scale), selective.LEVELS)
    np.testing.assert_allclose(got, np.quantile(x, selective.LEVELS), atol=1e-9)


@settings(max_examples=80, deadline=None)
@given(x=VALUES, drop=st.lists(st.booleans(), min_size=60, max_size=60))
def test_zero_weight_rows_drop_out(x, drop):
    x = np.asarray(x)
    w = np.where(np.asarray(drop[: len(x)]), 0.0, 1.0)
    if not w.any():
        w[0] = 1.0
    np.testing.assert_allclose(
        weighted_quantiles(x, w, selective.LEVELS), np.quantile(x[w > 0], selective.LEVELS), atol=1e-9
    )


def test_stability_weights_move_only_the_whole_match_maps_non_member_side():
    rng = np.random.default_rng(0)
    zm, zn = rng.normal(0, 3, (400, 2)), rng.normal(0, 2, (400, 2))
    ym, yn = zm.argmax(1), np.where(rng.random(400) < 0.8, zn.argmax(1), 1 - zn.argmax(1))
    tables = selective.fit_tables(member_logits=zm, member_labels=ym, nonmember_logits=zn, nonmember_labels=yn)
    same = stability_tables(tables, zn, yn, np.ones(400))
    np.testing.assert_allclose(np.asarray(same.nonmember_q[0][0]), np.asarray(tables.nonmember_q[0][0]), atol=1e-9)
    confident = np.abs(zn[:, 0] - zn[:, 1]) > 2  # keep only confident non-members: the map's target sharpens
    sharper = stability_tables(tables, zn, yn, confident.astype(float))
    assert np.median(sharper.nonmember_q[0][0]) > np.median(tables.nonmember_q[0][0])
    assert sharper.member_q == tables.member_q and sharper.nonmember_sorted == tables.nonmember_sorted


def test_ranked_map_tiles_the_non_members_quantiles_by_stratum():
    """Each stratum lands on its own slice (least stable lowest), and together the members' mapped
    scores keep the non-members' distribution: the single query sees the served map's marginal."""
    rng = np.random.default_rng(1)
    zm, zn = rng.normal(0, 4, (3000, 2)), rng.normal(0, 2, (3000, 2))
    ym, yn = zm.argmax(1), zn.argmax(1)  # every row correct: one group per class
    tables = selective.fit_tables(member_logits=zm, member_labels=ym, nonmember_logits=zn, nonmember_labels=yn)
    stratum = rng.integers(0, 3, 3000)
    per_stratum = ranked_tables(tables, zm, ym, stratum)
    assert len(per_stratum) == 3
    label, s = selective.top_log_odds(zm.astype(np.float32))
    for c in (0, 1):
        mapped = []
        for t in range(3):
            rows = (label == c) & (stratum == t)
            mapped.append(per_stratum[t].map_members(s[rows], np.full(rows.sum(), c), np.ones(rows.sum(), bool)))
        for low, high in itertools.pairwise(mapped):
            assert np.quantile(low, 0.95) <= np.quantile(high, 0.05)
        together = np.concatenate(mapped)
        nonmember = np.asarray(tables.nonmember_q[c][0])
        inner = selective.LEVELS[10:-10]
        expected = np.interp(inner, selective.LEVELS, nonmember)
        np.testing.assert_allclose(np.quantile(together, inner), expected, atol=0.15)


def test_a_stratum_too_small_keeps_the_served_map():
    rng = np.random.default_rng(2)
    zm, zn = rng.normal(0, 4, (400, 2)), rng.normal(0, 2, (400, 2))
    ym, yn = zm.argmax(1), zn.argmax(1)
    tables = selective.fit_tables(member_logits=zm, member_labels=ym, nonmember_logits=zn, nonmember_labels=yn)
    stratum = np.r_[np.zeros(3, int), np.ones(397, int)]  # stratum 0 has fewer than MIN_ROWS rows in every group
    low, _ = ranked_tables(tables, zm, ym, stratum)
    assert low.member_q == tables.member_q and low.nonmember_q == tables.nonmember_q


def test_strata_count_lost_edits_from_the_top():
    kept = np.arange(DEFENDER_EDITS + 1)
    got = strata(kept)
    assert got[-1] == STRATA - 1 and got[-2] == STRATA - 2 and (got[: DEFENDER_EDITS - STRATA + 2] == 0).all()
    assert (np.diff(got) >= 0).all()


def test_conditional_map_sends_each_stratum_to_its_own_non_members():
    """Stratum t's members land on stratum t's non-members' scores; a stratum with too few rows
    keeps the served map."""
    rng = np.random.default_rng(3)
    zm, zn = rng.normal(0, 4, (2000, 2)), rng.normal(0, 2, (3000, 2))
    ym, yn = zm.argmax(1), zn.argmax(1)
    tables = selective.fit_tables(member_logits=zm, member_labels=ym, nonmember_logits=zn, nonmember_labels=yn)
    _, sn = selective.top_log_odds(zn.astype(np.float32))
    n_stratum = np.where(sn > np.median(sn), 2, 1)  # the confident half of non-members is the stable one
    m_stratum = np.r_[np.zeros(4, int), rng.integers(1, 3, 1996)]
    per_stratum = conditional_tables(
        tables,
        member_logits=zm,
        member_labels=ym,
        member_stratum=m_stratum,
        nonmember_logits=zn,
        nonmember_labels=yn,
        nonmember_stratum=n_stratum,
    )
    assert len(per_stratum) == 3
    assert per_stratum[0].member_q == tables.member_q and per_stratum[0].nonmember_q == tables.nonmember_q
    label, s = selective.top_log_odds(zm.astype(np.float32))
    for c in (0, 1):
        ln = selective.top_log_odds(zn.astype(np.float32))[0]
        for t in (1, 2):
            rows = (label == c) & (m_stratum == t)
            mapped = per_stratum[t].map_members(s[rows], np.full(rows.sum(), c), np.ones(rows.sum(), bool))
            target = sn[(ln == c) & (n_stratum == t)]
            assert abs(np.median(mapped) - np.median(target)) < 0.1 * np.std(sn)


def test_strongest_excess_compares_the_maxima_over_kinds():
    """A kind where the output leaks less than label-only's best kind costs nothing: the suite
    compares the strongest attack of any kind on each side."""
    reference = {"texts": (54.0, 53.0, 1.0, 1.0), "edits": (56.0, 55.0, 2.0, 1.5)}
    readings = {"texts": (55.5, 54.0, 1.2, 1.0), "edits": (55.8, 55.0, 2.6, 2.0)}
    acc, tpr = strongest_excess(readings, reference)
    assert np.isclose(acc, -0.2) and np.isclose(tpr, 0.6)
    readings["texts"] = (57.0, 54.0, 3.5, 1.0)
    acc, tpr = strongest_excess(readings, reference)
    assert np.isclose(acc, 1.0) and np.isclose(tpr, 1.5)


def test_edit_fitted_map_sends_edits_onto_non_members_edits():
    """Members' inexact matches (edits, a little less confident than their texts) land on the
    non-members' edits' scores, not in the served map's low quantiles; unmatched edits are left
    out of the fit, and a group too small keeps the served map."""
    rng = np.random.default_rng(4)
    zm, zn = rng.normal(0, 4, (1000, 2)), rng.normal(0, 2, (3000, 2))
    ym, yn = zm.argmax(1), zn.argmax(1)
    tables = selective.fit_tables(member_logits=zm, member_labels=ym, nonmember_logits=zn, nonmember_labels=yn)
    member_edits = np.repeat(zm, DEFENDER_EDITS, axis=0) * 0.7  # edits: less confident, same label
    nonmember_edits = np.repeat(zn, DEFENDER_EDITS, axis=0) * 0.9
    edit_labels = np.repeat(ym, DEFENDER_EDITS)
    near = rng.random(len(member_edits)) < 0.9
    fitted = near_tables(
        tables,
        member_edit_logits=member_edits,
        member_edit_labels=edit_labels,
        near=near,
        nonmember_edit_logits=nonmember_edits,
        nonmember_edit_labels=np.repeat(yn, DEFENDER_EDITS),
    )
    label, s = selective.top_log_odds(member_edits.astype(np.float32))
    ln, sn = selective.top_log_odds(nonmember_edits.astype(np.float32))
    for c in (0, 1):
        rows = near & (label == c)
        args = (s[rows], np.full(rows.sum(), c), np.ones(rows.sum(), bool))
        target = np.median(sn[ln == c])
        assert abs(np.median(fitted.map_members(*args)) - target) < 0.1 * np.std(sn)
        assert np.median(tables.map_members(*args)) < target - 0.1 * np.std(sn)  # the served map sends edits low
    none = near_tables(
        tables,
        member_edit_logits=member_edits,
        member_edit_labels=edit_labels,
        near=np.zeros(len(member_edits), bool),
        nonmember_edit_logits=nonmember_edits,
        nonmember_edit_labels=np.repeat(yn, DEFENDER_EDITS),
    )
    assert none.member_q == tables.member_q and none.nonmember_q == tables.nonmember_q


def test_near_defender_serves_copies_by_the_served_map_and_the_rest_by_the_edit_map():
    """Each row is served once, by its own tables, and gets exactly what a whole batch served by
    those tables gets for it (outputs do not depend on the batch's other rows)."""
    rng = np.random.default_rng(5)
    zm, zn = rng.normal(0, 4, (400, 2)), rng.normal(0, 2, (1200, 2))
    ym, yn = zm.argmax(1), zn.argmax(1)
    tables = selective.fit_tables(member_logits=zm, member_labels=ym, nonmember_logits=zn, nonmember_labels=yn)
    edited = near_tables(
        tables,
        member_edit_logits=zm * 0.5,
        member_edit_labels=ym,
        near=np.ones(len(zm), bool),
        nonmember_edit_logits=zn,
        nonmember_edit_labels=yn,
    )
    sig = rng.integers(0, 2**31 - 1, (len(zm), SIGNATURE_SIZE)).astype(np.int32)
    index = MemberIndex(minhash(sig), ym, sketches=sketch(sig))
    copy = rng.random(len(zm)) < 0.5
    got = near_defender(tables, edited, index)(zm, sig, copy, 0.0)
    threat = np.zeros(len(zm))
    for t, rows in ((tables, copy), (edited, ~copy)):
        whole = selective.defend(zm.astype(np.float32), t, index=index, signatures=sig, threat=threat)
        np.testing.assert_array_equal(got[rows], whole.probabilities[rows])
    assert not np.array_equal(
        got[~copy],
        selective.defend(zm.astype(np.float32), tables, index=index, signatures=sig, threat=threat).probabilities[
            ~copy
        ],
    )  # the edit map moves them elsewhere
