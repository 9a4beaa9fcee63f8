"""The selective defense (the served ``veil``): labels, bytes, the member map, the threat ladder."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from veil.python_backend import calibrate, selective
from veil.python_backend.calibrate import CalibrationConfig, calibrate_selective
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import EMPTY, MINHASH_SIZE, NO_SEQUENCE, SIGNATURE_SIZE, minhash, sketch
from veil.python_backend.leakage import threshold_attack_suite
from veil.python_backend.member_index import MemberIndex

from .conftest import make_artifact, member_signatures, synthetic_labels, synthetic_logits

F32_MAX = float(np.finfo(np.float32).max)
finite_f32 = st.floats(-F32_MAX, F32_MAX, allow_nan=False, allow_infinity=False, width=32)


def veil(classes: int, **kw) -> Defense:
    return Defense(make_artifact(classes), config=DefenseConfig(variant="veil", **kw))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(2, 6).flatmap(
        lambda c: arrays(np.float32, st.tuples(st.integers(1, 12), st.just(c)), elements=finite_f32)
    ),
    st.floats(0.0, 1.0),
    st.booleans(),
)
def test_label_kept_for_every_finite_logit_vector(z, threat, gated):
    """Over float32's whole finite range, ties and near-ties included: the label is the raw argmax
    (first on ties), it is the served argmax, and the vector is a finite distribution."""
    d = veil(z.shape[1])
    b = len(z)
    sig = member_signatures(300)[:b] if gated else None  # training texts' signatures: gated rows
    out = d(z, threat=np.full(b, threat), signatures=sig)
    assert (out.labels == z.argmax(1)).all()
    assert (out.probabilities.argmax(1) == out.labels).all()
    assert np.isfinite(out.probabilities).all() and (out.probabilities >= 0).all()
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("classes", [2, 4])
def test_near_ties_and_extremes_keep_the_label(classes):
    big = np.float32(F32_MAX)
    z = np.zeros((6, classes), np.float32)
    z[0, 1] = np.nextafter(np.float32(0), np.float32(1))  # class 1 wins by one ulp
    z[1, :] = big  # all tied at the largest float32: class 0
    z[2, 0], z[2, 1] = big, np.nextafter(big, np.float32(0))
    z[3, :] = -big
    z[3, classes - 1] = big
    z[4, 0], z[4, 1] = 1.2e7, 1.2e7 + 1  # the first round's binary closed form returned 0.5 / 0.5 here
    z[5, 1] = -1e-30
    out = veil(classes)(z)
    assert (out.labels == z.argmax(1)).all()
    assert (out.probabilities.argmax(1) == z.argmax(1)).all()
    assert (out.probabilities[np.arange(6), out.labels] > out.probabilities.max(1, initial=0, where=False)).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**31 - 1), st.floats(-1e4, 1e4))
def test_served_bytes_do_not_depend_on_the_logits_offset(classes, seed, offset):
    """Equal decisions give identical bytes: the served vector is a function of (label, bin, class
    order); a common offset may only move a row across a bin edge, and then the output is the
    other bin's exact bytes."""
    d = veil(classes)
    z = synthetic_logits(64, classes, sharp=4.0, seed=seed)
    shifted = (z.astype(np.float64) + offset).astype(np.float32)
    a, b = d(z).probabilities, d(shifted).probabilities
    served = {r.tobytes() for r in a}
    assert all(r.tobytes() in served or r.tobytes() in {x.tobytes() for x in b} for r in b)
    same = (a == b).all(1)
    assert same.mean() > 0.9
    levels = {r.tobytes() for r in np.concatenate([a, b])}
    assert len(levels) <= classes * d.tables.coarse_levels * 2  # a finite menu, no float residue


def test_members_are_served_what_non_members_get():
    """With teeth: members' logits are sharper; gated, their served confidences have the
    non-members' distribution (KS) and the simple attacks drop to the label-only reference;
    without the gate the same outputs separate clearly."""
    rng = np.random.default_rng(3)
    members = synthetic_logits(2000, 2, sharp=8.0, seed=11)
    nonmembers = synthetic_logits(2000, 2, sharp=3.0, seed=12)
    y_m, y_n = members.argmax(1), synthetic_labels(nonmembers, seed=13, wrong=0.1)
    calib_n, eval_n = nonmembers[:1500], nonmembers[1500:]
    tables = calibrate_selective(
        member_logits=members[:500],
        member_labels=y_m[:500],
        nonmember_logits=calib_n,
        nonmember_labels=y_n[:1500],
        training_logits=members,
        training_labels=y_m,
        config=CalibrationConfig(floor_grid=(0.0,)),
    )
    sig = member_signatures(2000, seed=5)
    index = MemberIndex(minhash(sig), y_m)
    z = np.concatenate([members[1500:], eval_n])
    y = np.r_[y_m[1500:], y_n[1500:]]
    is_member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    q = np.zeros(1000)
    fresh = rng.integers(0, 2**31 - 1, (500, sig.shape[1]), dtype=np.int64).astype(np.int32)
    gated = selective.defend(z, tables, index=index, signatures=np.concatenate([sig[1500:], fresh]), threat=q)
    open_ = selective.defend(z, tables, index=index, signatures=None, threat=q)
    assert (gated.member_weight[is_member] == 1).all() and (gated.member_weight[~is_member] == 0).all()
    assert_members_hidden(gated, open_, y, is_member)


def assert_members_hidden(
    served: selective.SelectiveResult, unmoved: selective.SelectiveResult, y: np.ndarray, is_member: np.ndarray
) -> None:
    """Served, members' confidences have the non-members' distribution (KS) and the simple attacks
    read the label-only reference; unmoved, the same rows separate clearly."""
    correct = served.labels == y
    ks = ks_2samp(served.confidence[is_member & correct], served.confidence[~is_member & correct])
    ks_unmoved = ks_2samp(unmoved.confidence[is_member & correct], unmoved.confidence[~is_member & correct])
    assert ks.pvalue > 1e-3 and ks_unmoved.pvalue < 1e-6
    onehot = np.eye(2, dtype=np.float32)[served.labels]
    reference = max(threshold_attack_suite(onehot, y, is_member).values())
    defended = max(threshold_attack_suite(served.probabilities, y, is_member).values())
    undefended = max(threshold_attack_suite(unmoved.probabilities, y, is_member).values())
    assert defended - reference < 0.04 < undefended - reference


def test_threat_ladder_ends_in_calibrated_label_only():
    d = veil(3, intensity=None)
    z = synthetic_logits(400, 3, sharp=4.0, seed=9)
    counts = []
    for q in (0.0, 0.3, 0.6, 0.9, 1.0):
        p = Defense(d.artifact, config=DefenseConfig(variant="fixed_intensity", intensity=q))(z).probabilities
        counts.append(len({r.tobytes() for r in p}))
    assert counts == sorted(counts, reverse=True) and counts[-1] <= 3 * 2  # one vector per (class, order)
    last = Defense(d.artifact, config=DefenseConfig(variant="fixed_intensity", intensity=1.0))(z)
    for c in range(3):
        tops = last.probabilities[last.labels == c].max(1)
        assert len(np.unique(tops)) == 1
        _, table = d.tables.bins(c)
        conf = table[-1]
        assert tops[0] == pytest.approx(max(conf[0], d.tables.tail_profile[0] / (1 + d.tables.tail_profile[0]) + 1e-3))


def test_adaptive_variant_follows_the_threat_and_fixed_does_not():
    art = make_artifact(2)
    z = synthetic_logits(300, 2, sharp=4.0, seed=4)
    adaptive = Defense(art, config=DefenseConfig(variant="veil"))
    fixed = Defense(art, config=DefenseConfig(variant="fixed_intensity"))
    calm, hot = adaptive(z, threat=np.zeros(300)), adaptive(z, threat=np.ones(300))
    assert len({r.tobytes() for r in hot.probabilities}) < len({r.tobytes() for r in calm.probabilities})
    assert (fixed(z, threat=np.ones(300)).probabilities == fixed(z, threat=np.zeros(300)).probabilities).all()


def test_pav_is_monotone_and_weighted():
    y = np.array([0.2, 0.9, 0.5, 0.4, 1.0])
    w = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    out = selective._pav(y, w)
    assert (np.diff(out) >= 0).all()
    assert out[1] == out[2] == out[3] == pytest.approx((0.9 + 1.0 + 0.4) / 4)


def test_quantile_map_is_monotone_and_continuous_past_the_ends():
    qm = np.linspace(2.0, 8.0, len(selective.LEVELS))
    qn = np.linspace(0.0, 4.0, len(selective.LEVELS))
    s = np.linspace(-5, 20, 2001)
    out = selective.quantile_map(s, qm, qn)
    assert (np.diff(out) >= -1e-12).all()
    assert np.abs(np.diff(out)).max() < 0.05  # no jump at the tables' ends
    assert selective.quantile_map(np.array([5.0]), qm, qn)[0] == pytest.approx(2.0)


@pytest.mark.parametrize("classes", [2, 4])
def test_every_level_is_a_function_of_the_floors_output(classes):
    """Reading or moving one's own level gives nothing beyond the most useful level: for any rows,
    the output at a higher level is determined by the output at level 0 (nested bins)."""
    art = make_artifact(classes)
    z = synthetic_logits(3000, classes, sharp=4.0, seed=21)
    out = {
        q: Defense(art, config=DefenseConfig(variant="fixed_intensity", intensity=q))(z).probabilities
        for q in (0.0, 1 / 6, 0.25, 0.5, 0.8, 1.0)
    }
    fine = [r.tobytes() for r in out[0.0]]
    for q, p in out.items():
        seen: dict[bytes, bytes] = {}
        for f, r in zip(fine, p, strict=True):
            assert seen.setdefault(f, r.tobytes()) == r.tobytes(), q
    counts = [len({r.tobytes() for r in p}) for p in out.values()]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def _crop_world(seed: int = 4):
    """Synthetic training texts as content sketches (8 distinct values each, disjoint MinHash so the
    Jaccard gate never fires on a crop), their crops (3 of the 8 values), sharper than the crops of
    non-members (values no training text has)."""
    rng = np.random.default_rng(seed)
    n = 1500
    values = rng.permutation(10**6)[: n * 8].reshape(n, 8) + 1
    texts = np.full((n, SIGNATURE_SIZE), EMPTY, np.int32)
    texts[:, :MINHASH_SIZE] = member_signatures(n, seed=seed)[:, :MINHASH_SIZE]
    texts[:, MINHASH_SIZE : MINHASH_SIZE + 8] = np.sort(values, axis=1)

    def crops_of(rows: np.ndarray, pool: np.ndarray) -> np.ndarray:
        out = np.full((len(rows), SIGNATURE_SIZE), EMPTY, np.int32)
        out[:, :MINHASH_SIZE] = rng.integers(0, 2**31 - 1, (len(rows), MINHASH_SIZE))
        out[:, MINHASH_SIZE : MINHASH_SIZE + 3] = np.sort([rng.choice(pool[r], 3, replace=False) for r in rows], axis=1)
        return out

    strangers = rng.permutation(np.arange(10**6, 2 * 10**6))[: n * 8].reshape(n, 8)
    members = synthetic_logits(n, 2, sharp=7.0, seed=seed)
    crop_m, crop_n = synthetic_logits(n, 2, sharp=5.0, seed=seed + 1), synthetic_logits(n, 2, sharp=2.0, seed=seed + 2)
    y_m = members.argmax(1)
    return texts, values, strangers, members, y_m, crop_m, crops_of, crop_n


def _fitted(members: np.ndarray, y_m: np.ndarray, nonmembers: np.ndarray, y_n: np.ndarray) -> selective.SelectiveTables:
    """Tables at 64 levels: the map's member side on every training text, the floor rule on the first 500."""
    return calibrate_selective(
        member_logits=members[:500],
        member_labels=y_m[:500],
        nonmember_logits=nonmembers,
        nonmember_labels=y_n,
        training_logits=members,
        training_labels=y_m,
        config=CalibrationConfig(floor_grid=(0.0,)),
    )


@lru_cache(maxsize=1)
def _crop_tables():
    """Selective tables with a partial-match map fitted on the defender's crops of half the training
    texts, and the index; plus what the tests attack with."""
    texts, values, strangers, members, y_m, crop_m, crops_of, crop_n = _crop_world()
    nonmembers = synthetic_logits(1500, 2, sharp=3.0, seed=40)
    y_n = synthetic_labels(nonmembers, seed=41, wrong=0.1)
    tables = _fitted(members, y_m, nonmembers, y_n)
    index = MemberIndex(minhash(texts), y_m, sketches=sketch(texts))
    assert not tables.has_partial
    fit_rows = np.arange(1000)  # the defender crops half of its training texts, and its calibration non-members
    crop_y_n = synthetic_labels(crop_n, seed=42, wrong=0.2)
    calibrate.fit_partial(
        tables,
        calibrate.CropRows(
            member_logits=crop_m[fit_rows],
            member_labels=y_m[fit_rows],
            member_signatures=crops_of(fit_rows, values),
            nonmember_logits=crop_n[:1000],
            nonmember_labels=crop_y_n[:1000],
        ),
        index,
    )
    return SimpleNamespace(**locals())


def test_members_crops_are_served_what_non_members_crops_get():
    """With teeth: a crop of a training text (the partial gate: all its content values in that
    text) is answered like a non-member's crop once the partial-match map is fitted (KS, simple
    attacks at the label-only reference); without the map the same crops separate clearly. A
    non-member's crop (no training text shares its values) is untouched."""
    w = _crop_tables()
    tables, index, values, strangers, y_m, crop_m, crops_of, crop_n, crop_y_n = (
        w.tables,
        w.index,
        w.values,
        w.strangers,
        w.y_m,
        w.crop_m,
        w.crops_of,
        w.crop_n,
        w.crop_y_n,
    )
    assert tables.has_partial and tables.metrics["partial"]["member_crops_matched"] == 1000
    assert selective.SelectiveTables.from_json(tables.to_json()).to_json() == tables.to_json()
    # The attacker's crops: other crops of training texts 1000..1499, and of non-members.
    rows = np.arange(1000, 1500)
    z = np.concatenate([crop_m[rows], crop_n[1000:]])
    y = np.r_[y_m[rows], crop_y_n[1000:]]
    sig = np.concatenate([crops_of(rows, values), crops_of(np.arange(500), strangers)])
    is_member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    q = np.zeros(1000)
    served = selective.defend(z, tables, index=index, signatures=sig, threat=q)
    old = replace(tables, partial_member_q=[], partial_nonmember_q=[])
    unmapped = selective.defend(z, old, index=index, signatures=sig, threat=q)
    assert (served.member_weight == 0).all()  # the Jaccard gate sees no crop
    assert (served.partial_weight[is_member] == 1).all() and (served.partial_weight[~is_member] == 0).all()
    np.testing.assert_array_equal(served.probabilities[~is_member], unmapped.probabilities[~is_member])
    assert (served.labels == z.argmax(1)).all() and (served.probabilities.argmax(1) == served.labels).all()
    assert_members_hidden(served, unmapped, y, is_member)
    # One row alone or in the batch: the same bytes.
    for i in (0, 499, 500, 999):
        alone = selective.defend(z[i : i + 1], tables, index=index, signatures=sig[i : i + 1], threat=q[:1])
        assert alone.probabilities.tobytes() == served.probabilities[i : i + 1].tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(np.float32, st.tuples(st.integers(1, 12), st.just(2)), elements=finite_f32), st.floats(0.0, 1.0))
def test_partial_matches_keep_the_label_for_every_finite_logit_vector(z, threat):
    """Rows the partial-match map moves, over float32's whole finite range: the label is the raw
    argmax and the served argmax, the vector a finite distribution."""
    w = _crop_tables()
    sig = w.crops_of(np.arange(len(z)), w.values)
    out = selective.defend(z, w.tables, index=w.index, signatures=sig, threat=np.full(len(z), threat))
    assert (out.partial_weight == 1).all()
    assert (out.labels == z.argmax(1)).all() and (out.probabilities.argmax(1) == out.labels).all()
    assert np.isfinite(out.probabilities).all() and (out.probabilities >= 0).all()
    np.testing.assert_allclose(out.probabilities.sum(1), 1.0, atol=1e-5)


@lru_cache(maxsize=1)
def _edit_world(seed: int = 6):
    """Training texts (random signatures and sequence hashes) and edits of them that keep the token
    set (a swap: the same signature, another sequence), less confident than the texts; non-members'
    edits (signatures no training text has) less confident still. The near-copy map is fitted on the
    defender's edits of the first 1,000 texts; the attacker edits the other 500."""
    rng = np.random.default_rng(seed)
    n = 1500
    sig = member_signatures(n, seed=seed)
    seq = rng.integers(0, 2**62, n)
    members = synthetic_logits(n, 2, sharp=9.0, seed=seed)
    y_m = members.argmax(1)
    nonmembers = synthetic_logits(1500, 2, sharp=3.0, seed=seed + 1)
    y_n = synthetic_labels(nonmembers, seed=seed + 2, wrong=0.1)
    tables = _fitted(members, y_m, nonmembers, y_n)
    index = MemberIndex(minhash(sig), y_m, sketches=sketch(sig), sequences=seq)
    edit_m = synthetic_logits(n, 2, sharp=4.0, seed=seed + 3)  # same classes as their texts
    edit_m[edit_m.argmax(1) != y_m] = edit_m[edit_m.argmax(1) != y_m][:, ::-1]
    edit_n = synthetic_logits(n, 2, sharp=3.0, seed=seed + 4)
    y_en = synthetic_labels(edit_n, seed=seed + 5, wrong=0.2)
    edit_seq = seq + 1  # not a training text's
    fit = np.arange(1000)
    calibrate.fit_near(
        tables,
        calibrate.EditRows(
            member_logits=edit_m[fit],
            member_labels=y_m[fit],
            member_signatures=sig[fit],
            member_sequences=np.r_[edit_seq[fit[:-100]], seq[fit[-100:]]],  # 100 edits left the text as it was
            nonmember_logits=edit_n[:1000],
            nonmember_labels=y_en[:1000],
        ),
        index,
    )
    return SimpleNamespace(**locals())


def test_members_edits_are_served_what_non_members_edits_get():
    """With teeth: a training text's edit that keeps its token set (the gate matches it fully) but
    not its token sequence goes through the near-copy map and is answered like a non-member's edit
    (KS, simple attacks at the label-only reference); through the copies' map, as before, it is sent
    below them and the same attacks read it. Exact copies, and rows without a sequence hash, are
    served exactly as without the near-copy map."""
    w = _edit_world()
    tables, index = w.tables, w.index
    assert tables.has_near and tables.metrics["near"]["member_edits_near"] == 900
    assert tables.metrics["near"]["member_edits_copies"] == 100
    assert selective.SelectiveTables.from_json(tables.to_json()).to_json() == tables.to_json()
    rows = np.arange(1000, 1500)
    strangers = member_signatures(500, seed=99)
    z = np.concatenate([w.edit_m[rows], w.edit_n[1000:]])
    y = np.r_[w.y_m[rows], w.y_en[1000:]]
    sig = np.concatenate([w.sig[rows], strangers])
    seq = np.r_[w.edit_seq[rows], np.arange(500)]
    is_member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    q = np.zeros(1000)
    served = selective.defend(z, tables, index=index, signatures=sig, threat=q, sequences=seq)
    as_copies = selective.defend(z, tables, index=index, signatures=sig, threat=q)
    assert (served.member_weight[is_member] == 1).all() and (served.member_weight[~is_member] == 0).all()
    assert served.near[is_member].all() and not served.near[~is_member].any() and not as_copies.near.any()
    np.testing.assert_array_equal(served.probabilities[~is_member], as_copies.probabilities[~is_member])
    assert (served.labels == z.argmax(1)).all() and (served.probabilities.argmax(1) == served.labels).all()
    # Members' edits answered like non-members' edits; through the copies' map they are sent below them.
    correct = served.labels == y
    for out, hidden in ((served, True), (as_copies, False)):
        m, n = out.confidence[is_member & correct], out.confidence[~is_member & correct]
        auc = roc_auc_score(np.r_[np.ones(len(m)), np.zeros(len(n))], np.r_[m, n])
        p = ks_2samp(m, n).pvalue
        assert (p > 1e-3 and abs(auc - 0.5) < 0.05) if hidden else (p < 1e-6 and auc < 0.45)
    # Copies (the training text itself) and rows sent without a sequence: the copies' map, bytes unchanged.
    old = replace(tables, near_member_q=[], near_nonmember_q=[])
    for s in (w.seq[rows], np.full(500, NO_SEQUENCE)):
        copies = selective.defend(
            w.members[rows], tables, index=index, signatures=w.sig[rows], threat=q[:500], sequences=s
        )
        before = selective.defend(
            w.members[rows], old, index=index, signatures=w.sig[rows], threat=q[:500], sequences=s
        )
        assert not copies.near.any()
        assert copies.probabilities.tobytes() == before.probabilities.tobytes()
    # One row alone or in the batch: the same bytes.
    for i in (0, 499, 500, 999):
        alone = selective.defend(
            z[i : i + 1], tables, index=index, signatures=sig[i : i + 1], threat=q[:1], sequences=seq[i : i + 1]
        )
        assert alone.probabilities.tobytes() == served.probabilities[i : i + 1].tobytes()


def test_a_near_copy_group_too_small_to_fit_is_served_by_the_copies_map():
    w = _edit_world()
    thin = replace(w.tables, near_member_q=[[[], []], [[], []]], near_nonmember_q=[[[], []], [[], []]])
    rows = np.arange(1000, 1500)
    args = dict(index=w.index, signatures=w.sig[rows], threat=np.zeros(500), sequences=w.edit_seq[rows])
    near = selective.defend(w.edit_m[rows], thin, **args)
    copies = selective.defend(w.edit_m[rows], thin, **{**args, "sequences": None})
    assert near.near.all()
    assert near.probabilities.tobytes() == copies.probabilities.tobytes()
    with pytest.raises(ValueError, match="map kind"):
        w.tables.map_members(np.zeros(1), np.zeros(1, np.int64), np.ones(1, bool), kind="crop")


def _binary(label: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Two-class logits with top log-odds ``s`` on ``label``."""
    z = np.zeros((len(s), 2), np.float32)
    z[np.arange(len(s)), label] = s
    return z


def _difficulty_world(seed: int = 8):
    """Texts with a difficulty ``d``: a model that never trained on a text scores it 2 + 1.5 d (plus
    noise); the served model scores its training texts high whatever their difficulty (memorised),
    and non-members as a model that never saw them. The leave-out part models are such models,
    trained on less data (less confident: 1.6 + 1.2 d). A reference model (the attacker's, never
    trained on any of them) scores every text like a non-member."""
    rng = np.random.default_rng(seed)
    n = 1000

    def unseen(d: np.ndarray, a: float = 2.0, b: float = 1.5) -> np.ndarray:
        return a + b * d + 0.5 * rng.normal(size=len(d))

    d_m, d_n, d_c = rng.normal(size=n), rng.normal(size=n), rng.normal(size=1500)
    y_m, y_n, y_c = rng.integers(0, 2, n), rng.integers(0, 2, n), rng.integers(0, 2, 1500)
    members = _binary(y_m, 7.0 + 0.3 * d_m + rng.normal(size=n))
    calib = _binary(y_c, unseen(d_c))
    tables = _fitted(members, y_m, calib, y_c)
    rows = calibrate.LeaveOutRows(
        held_out_logits=_binary(y_m, unseen(d_m, 1.6, 1.2)),
        calibration_logits=[_binary(y_c, unseen(d_c, 1.6, 1.2)) for _ in range(2)],
        parts=rng.integers(0, 2, n),
    )
    lo_tables = replace(tables, leave_out_q=calibrate.leave_out_scale(rows, calib))
    sig, seq = member_signatures(n, seed=seed), rng.integers(0, 2**62, n)
    index = MemberIndex(minhash(sig), y_m, sketches=sketch(sig), sequences=seq, parts=rows.parts)
    plain = MemberIndex(minhash(sig), y_m, sketches=sketch(sig), sequences=seq)

    def held_out(first: int = 0):
        """The part models on batch rows ``first + i`` (members first, in index order); NaN beyond."""

        def answer(at: np.ndarray, parts: np.ndarray) -> np.ndarray:
            i, named = first + at, parts >= 0  # -1: no whole match, the answer is discarded
            assert (parts[named] == rows.parts[i[named]]).all()  # the part that left the matched text out
            out = np.full((len(at), 2), np.nan, np.float32)
            out[i < n] = rows.held_out_logits[i[i < n]]
            return out

        return answer

    nonmembers = _binary(y_n, unseen(d_n))
    reference = np.r_[unseen(d_m), unseen(d_n)]
    return SimpleNamespace(**locals())


def test_whole_matches_answered_by_their_part_model_look_like_non_members_of_their_difficulty():
    """With teeth: against an attacker who compares each output with what a reference model that
    never saw the text gives (offline LiRA's statistic), copies served through the whole-match map
    are told apart (memorised scores say little about difficulty), copies answered by the part
    model that never trained on them are not (KS over the residuals, and |AUC - 0.5| on both
    tails). Near copies are answered by the part model too; rows it cannot answer (no tokens) and
    every row without part models keep the maps' bytes."""
    w = _difficulty_world()
    z = np.concatenate([w.members, w.nonmembers])
    sig = np.concatenate([w.sig, member_signatures(len(w.nonmembers), seed=99)])
    seq = np.r_[w.seq, np.arange(len(w.nonmembers))]
    is_member = np.r_[np.ones(len(w.members), bool), np.zeros(len(w.nonmembers), bool)]
    q = np.zeros(len(z))
    kw = dict(signatures=sig, threat=q, sequences=seq)
    served = selective.defend(z, w.lo_tables, index=w.index, held_out=w.held_out(), **kw)
    mapped = selective.defend(z, w.tables, index=w.plain, **kw)
    assert served.left_out[is_member].all() and not served.left_out[~is_member].any()
    assert not mapped.left_out.any()
    assert (served.labels == z.argmax(1)).all() and (served.probabilities.argmax(1) == served.labels).all()
    np.testing.assert_array_equal(served.probabilities[~is_member], mapped.probabilities[~is_member])
    for out, hidden in ((served, True), (mapped, False)):
        residual = out.score_after - w.reference
        m, n = residual[is_member], residual[~is_member]
        p = ks_2samp(m, n).pvalue
        labels = np.r_[np.ones(len(m)), np.zeros(len(n))]
        tails = [roc_auc_score(labels, np.r_[m, n]), roc_auc_score(labels, np.abs(np.r_[m, n] - np.median(n)))]
        if hidden:
            assert p > 1e-3 and max(abs(a - 0.5) for a in tails) < 0.05, (p, tails)
        else:
            assert p < 1e-6 and max(abs(a - 0.5) for a in tails) > 0.1, (p, tails)
        # The single query's marginal is the non-members' either way.
        assert ks_2samp(out.score_after[is_member], out.score_after[~is_member]).pvalue > 1e-3
    # Near copies (another sequence hash) and rows without one: answered by the part model too.
    m_kw = dict(signatures=w.sig, threat=q[:1000])
    for s in (np.full(len(w.members), NO_SEQUENCE), w.seq + 1):
        other = selective.defend(w.members, w.lo_tables, index=w.index, held_out=w.held_out(), sequences=s, **m_kw)
        assert other.left_out.all() and other.probabilities.tobytes() == served.probabilities[:1000].tobytes()
    # Rows the part models cannot answer (NaN: logits sent without tokens), no part models, or no
    # leave-out tables: the maps' bytes.
    plain = selective.defend(w.members, w.tables, index=w.plain, sequences=w.seq, **m_kw)
    nan = lambda at, parts: np.full((len(at), 2), np.nan)  # noqa: E731
    for tables, index, held in (
        (w.lo_tables, w.index, nan),
        (w.lo_tables, w.index, None),
        (w.tables, w.index, w.held_out()),
    ):
        other = selective.defend(w.members, tables, index=index, held_out=held, sequences=w.seq, **m_kw)
        assert not other.left_out.any() and other.probabilities.tobytes() == plain.probabilities.tobytes()
    # One row alone or in the batch: the same bytes.
    for i in (0, 999, 1000):
        alone = selective.defend(
            z[i : i + 1],
            w.lo_tables,
            index=w.index,
            held_out=w.held_out(i),
            signatures=sig[i : i + 1],
            threat=q[:1],
            sequences=seq[i : i + 1],
        )
        assert alone.probabilities.tobytes() == served.probabilities[i : i + 1].tobytes()


def test_leave_out_scores_are_moved_onto_the_served_models_scale():
    """The part models are less confident than the served model; the per-class quantile map fitted
    on calibration non-members moves their scores onto the served model's non-member scale, so the
    copies' marginal is the non-members' (without it, copies would read *less* confident)."""
    w = _difficulty_world()
    own = selective.class_log_odds(w.rows.held_out_logits, 1)[w.y_m == 1]
    scores = w.lo_tables.held_out_scores(w.rows.held_out_logits, w.y_m)
    calib = selective.class_log_odds(w.calib, 1)[w.y_c == 1]
    assert ks_2samp(own, calib).pvalue < 1e-6
    assert ks_2samp(scores[w.y_m == 1], calib).pvalue > 1e-3
    assert np.isfinite(scores).all() and w.lo_tables.has_leave_out and not w.tables.has_leave_out
    # The tables survive JSON.
    again = selective.SelectiveTables.from_json(json.loads(json.dumps(w.lo_tables.to_json())))
    np.testing.assert_array_equal(again.held_out_scores(w.rows.held_out_logits, w.y_m), scores)
    # log-odds of a class, stable at float32's extremes
    big = np.array([[3e38, -3e38], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(selective.class_log_odds(big, 0), [selective.S_MAX, 0.0])
    with pytest.raises(ValueError, match="parts"):
        MemberIndex(minhash(w.sig), w.y_m, parts=w.rows.parts[:10])


def _trace(fn) -> list:
    """Every Python and C function ``fn`` calls, in order, and the shapes of the array arguments of
    the Python ones."""
    import gc
    import sys

    calls = []

    def profile(frame, event, arg):
        if event == "call":
            name = frame.f_code.co_name
            calls.append((name, [v.shape for v in frame.f_locals.values() if isinstance(v, np.ndarray)]))
        elif event == "c_call":
            calls.append((getattr(arg, "__name__", "?"), None))

    gc.disable()  # a collection would be traced wherever it happens to run
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        gc.enable()
    return calls


def _equal_work_rows(world: str):
    """(tables, index, {kind: (signature, sequence)}) of the world ``world``: a training text, the
    matches the gate treats differently from it, and non-members. ``parts``: the edits world with
    leave-out part models answering the whole matches (training text ``i`` left out of part
    ``i % 2``)."""
    if world == "parts":
        tables, shared, rows = _equal_work_rows("edits")
        index = copy.copy(shared)  # the edits world is cached: its index keeps no parts
        index.parts = np.arange(len(index.labels)) % 2
        n = len(selective.LEVELS)
        scale = [np.linspace(-6.0, 6.0, n).tolist(), np.linspace(-4.0, 8.0, n).tolist()]
        return replace(tables, leave_out_q=[scale] * tables.num_classes), index, rows
    rng = np.random.default_rng(0)
    stranger = member_signatures(4, seed=99)
    if world == "crops":  # whole and partial maps
        w = _crop_tables()
        crop = w.crops_of(np.array([3]), w.values)[0]
        other = w.crops_of(np.array([3]), w.strangers)[0]
        rows = {"copy": w.texts[3], "crop": crop, "stranger's crop": other, "non-member": stranger[0]}
        return w.tables, w.index, {k: (v, NO_SEQUENCE) for k, v in rows.items()}
    w = _edit_world()  # whole and near-copy maps, with the copy test
    rows = {
        "copy": (w.sig[3], w.seq[3]),
        "edit": (w.sig[3], w.seq[3] + 1),
        "non-member": (stranger[0], int(rng.integers(0, 2**62))),
        "another non-member": (stranger[1], int(rng.integers(0, 2**62))),
    }
    return w.tables, w.index, rows


@pytest.mark.parametrize("world", ["crops", "edits", "parts"])
def test_every_row_does_the_same_work_matched_or_not(world):
    """Timing: a training text finds itself in the member index and a non-member usually finds
    nothing, so a defense step that skipped work for unmatched rows answered members measurably
    slower (SST-2: AUC 0.549 on each text's median of 5 against veil_raw's 0.513). Every row kind
    goes through the same calls, in the same order, with arrays of the same shapes: one row at a
    time and in a small mixed batch against a batch of non-members (a small batch is padded to the
    index's budget, the most any training text finds). With leave-out part models every row is
    asked of them and mapped from their answer, matched or not (asked on the matches only, training
    texts read slower: served latency AUC 0.553)."""
    tables, index, rows = _equal_work_rows(world)
    z = np.array([[3.0, -2.0]], np.float32)
    held = {"held_out": lambda at, parts: np.tile(np.float32([[1.0, -1.0]]), (len(at), 1))} if world == "parts" else {}

    def run(kinds: list[str]) -> list:
        sig = np.stack([rows[k][0] for k in kinds]).astype(np.int32)
        seq = np.array([rows[k][1] for k in kinds], np.int64)
        zs = np.repeat(z, len(kinds), axis=0)
        kw = {"index": index, "signatures": sig, "threat": np.zeros(len(kinds)), "sequences": seq, **held}
        selective.defend(zs, tables, **kw)  # warm the caches (the first call builds the map stack)
        return _trace(lambda: selective.defend(zs, tables, **kw))

    out = selective.defend(
        np.repeat(z, len(rows), axis=0),
        tables,
        index=index,
        signatures=np.stack([r[0] for r in rows.values()]).astype(np.int32),
        threat=np.zeros(len(rows)),
        sequences=np.array([r[1] for r in rows.values()], np.int64),
        **held,
    )
    assert out.member_weight[0] == 1 and out.member_weight[-1] == 0  # the kinds are what they say
    if world == "parts":  # the copy and its edit answered by the part model, the others not
        assert out.left_out.tolist() == [True, True, False, False]
    else:
        assert (out.partial_weight[1] > 0) if world == "crops" else out.near[1]
    reference = run(["non-member"])
    assert any(name == "sketch_overlap" for name, _ in reference)
    for kind in rows:
        assert run([kind]) == reference, kind
    assert run(list(rows)) == run(["non-member"] * len(rows))


_cached_world = lru_cache(maxsize=None)(_equal_work_rows)


@pytest.mark.parametrize("world", ["crops", "edits"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_a_look_up_made_before_the_logits_gives_the_same_bytes(world, seed):
    """The hosted step looks its rows up while the classifier runs (:func:`selective.look_up` needs
    no logits): defending with that look-up, or with the look-up of the rows that survived (a
    request can fail after it), serves the bytes that looking up inside ``defend`` serves."""
    tables, index, rows = _cached_world(world)
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(rows), size=int(rng.integers(1, 12)))
    sig = np.stack([rows[k][0] for k in kinds]).astype(np.int32)
    seq = np.array([rows[k][1] for k in kinds], np.int64)
    z = (rng.normal(size=(len(kinds), 2)) * rng.choice([0.5, 5.0, 50.0])).astype(np.float32)
    threat = rng.uniform(0, 1, len(kinds))
    before = selective.look_up(tables, index=index, signatures=sig, sequences=seq, rows=len(kinds))
    keep = np.flatnonzero(rng.uniform(size=len(kinds)) < 0.6)
    for rows_, lookup in ((np.arange(len(kinds)), before), (keep, before.take(keep))):
        kw = {"index": index, "threat": threat[rows_]}
        inside = selective.defend(z[rows_], tables, signatures=sig[rows_], sequences=seq[rows_], **kw)
        ahead = selective.defend(z[rows_], tables, signatures=None, lookup=lookup, **kw)
        for field in ("probabilities", "labels", "member_weight", "partial_weight", "near", "score_after"):
            assert getattr(inside, field).tobytes() == getattr(ahead, field).tobytes(), field
    with pytest.raises(ValueError, match="look-up of"):
        selective.defend(z[:1], tables, index=index, signatures=None, threat=None, lookup=before.take(np.arange(0)))


def test_the_no_gate_ablations_look_up_moves_every_row_by_its_own_label():
    tables, index, rows = _cached_world("edits")
    z = synthetic_logits(30, 2, sharp=4.0, seed=11)
    sig = np.repeat(rows["non-member"][0][None], 30, axis=0).astype(np.int32)
    lookup = selective.look_up(tables, index=index, signatures=sig, sequences=None, rows=30, gated=False)
    assert lookup.member_label is None and (lookup.weight == 1).all()
    inside = selective.defend(z, tables, index=index, signatures=sig, threat=None, gated=False)
    ahead = selective.defend(z, tables, index=index, signatures=None, threat=None, lookup=lookup)
    assert inside.probabilities.tobytes() == ahead.probabilities.tobytes()
