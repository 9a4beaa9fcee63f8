from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.export.train import packaged_minilm
from veil.python_backend.fingerprint import EMPTY, SKETCH_SIZE, minhash, sketch, sketch_containment, sketch_jaccard
from veil.python_backend.member_index import PARTIAL_MIN_SHARED, REFINE_FROM, MemberIndex, _band_keys
from veil.python_backend.tokens import text_signatures

from .conftest import member_signatures

SMALL_BATCH = 4
"""Batches of a few rows: padding to the pair budget weighs most there."""


def brute_force(members: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    equal = (queries[:, None, :] == members[None, :, :]).sum(-1)
    best = equal.argmax(1)
    sim = equal.max(1) / members.shape[1]
    return sim, np.where(sim > 0, labels[best], -1)


def loop_nearest(
    members: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    member_sketches: np.ndarray | None = None,
    query_sketches: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-row loop the index used before it was vectorised: one dict per band, candidates
    unioned per query row, each scored on its own. Kept here as the reference the vectorised
    look-up must equal."""
    keys = _band_keys(members)
    tables = []
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        sk = keys[order, b]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        ends = np.r_[starts[1:], len(order)]
        tables.append({int(sk[s]): order[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)})
    sim, label = np.zeros(len(queries)), np.full(len(queries), -1, dtype=np.int64)
    for i, row in enumerate(_band_keys(queries)):
        found = [t[k] for t, k in zip(tables, row.tolist(), strict=True) if k in t]
        if not found:
            continue
        cand = np.unique(np.concatenate(found)) if len(found) > 1 else found[0]
        scores = []
        for m in cand:
            share = (members[m] == queries[i]).sum() / members.shape[1]
            if member_sketches is not None and share >= REFINE_FROM:
                j, ok = sketch_jaccard(query_sketches[i : i + 1], member_sketches[m : m + 1])
                share = j[0] if ok[0] else share
            scores.append(share)
        best = int(np.argmax(scores))
        sim[i] = scores[best]
        label[i] = labels[cand[best]]
    return sim, label


def random_sketches(rng: np.random.Generator, n: int, alphabet: int) -> np.ndarray:
    """Sketch rows over a small alphabet (so they overlap): sorted distinct values, some short or empty."""
    out = np.full((n, SKETCH_SIZE), EMPTY, np.int32)
    for i in range(n):
        size = int(rng.integers(0, SKETCH_SIZE + 1))
        vals = np.sort(rng.choice(alphabet, min(size, alphabet), replace=False))
        out[i, : len(vals)] = vals
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_vectorised_nearest_with_sketches_equals_the_loop(n_members, n_queries, alphabet, seed):
    """With content sketches on both sides, a candidate sharing at least REFINE_FROM of the MinHash
    values is scored by its sketch Jaccard (MinHash share where a sketch is empty), any other by its
    MinHash share: the vectorised and small-batch look-ups return what the per-row loop returns."""
    rng = np.random.default_rng(seed)
    members = rng.integers(0, alphabet, (n_members, 8)).astype(np.int32)
    labels = rng.integers(0, 4, n_members)
    queries = rng.integers(0, alphabet + 1, (n_queries, 8)).astype(np.int32)
    ms, qs = random_sketches(rng, n_members, 24), random_sketches(rng, n_queries, 24)
    copied = rng.random(n_queries) < 0.3
    pick = rng.integers(0, n_members, copied.sum())
    queries[copied], qs[copied] = members[pick], ms[pick]
    index = MemberIndex(members, labels, sketches=ms)
    want_sim, want_lab = loop_nearest(members, labels, queries, ms, qs)
    sim, lab = index.nearest(queries, sketches=qs)
    np.testing.assert_array_equal(sim, want_sim)
    np.testing.assert_array_equal(lab, want_lab)
    for start in range(0, min(n_queries, 12), SMALL_BATCH):
        part = slice(start, start + SMALL_BATCH)
        small_sim, small_lab = index.nearest(queries[part], sketches=qs[part])
        np.testing.assert_array_equal(small_sim, want_sim[part])
        np.testing.assert_array_equal(small_lab, want_lab[part])
    # without query sketches (a request without the sketch part) it is the MinHash index again
    np.testing.assert_array_equal(index.nearest(queries)[0], loop_nearest(members, labels, queries)[0])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(1, 6),
    st.sampled_from([2, 3, 5, 8]),
    st.integers(0, 2**31 - 1),
)
def test_vectorised_nearest_equals_the_loop(n_members, n_queries, alphabet, width, seed):
    """Random signatures over a small alphabet (so bands collide often, with many candidates and
    ties per row), some queries copied or edited from members: the vectorised look-up returns
    exactly what the per-row loop returned, similarity and label, row by row."""
    rng = np.random.default_rng(seed)
    members = rng.integers(0, alphabet, (n_members, width)).astype(np.int32)
    labels = rng.integers(0, 4, n_members)
    queries = rng.integers(0, alphabet + 1, (n_queries, width)).astype(np.int32)
    copied = rng.random(n_queries) < 0.3
    queries[copied] = members[rng.integers(0, n_members, copied.sum())]
    index = MemberIndex(members, labels)
    sim, lab = index.nearest(queries)
    want_sim, want_lab = loop_nearest(members, labels, queries)
    np.testing.assert_array_equal(sim, want_sim)
    np.testing.assert_array_equal(lab, want_lab)
    # small batches (mostly padding): the same answers row for row
    for start in range(0, min(n_queries, 12), SMALL_BATCH):
        small_sim, small_lab = index.nearest(queries[start : start + SMALL_BATCH])
        np.testing.assert_array_equal(small_sim, want_sim[start : start + SMALL_BATCH])
        np.testing.assert_array_equal(small_lab, want_lab[start : start + SMALL_BATCH])


def test_chunked_look_up_equals_one_pass(monkeypatch):
    """A batch whose candidate pairs exceed the chunk limit is answered in row chunks, identically."""
    from veil.python_backend import member_index

    rng = np.random.default_rng(3)
    members = rng.integers(0, 3, (400, 8)).astype(np.int32)
    labels = rng.integers(0, 2, 400)
    queries = rng.integers(0, 3, (64, 8)).astype(np.int32)
    whole = MemberIndex(members, labels).nearest(queries)
    monkeypatch.setattr(member_index, "MAX_PAIRS", 50)
    chunked = MemberIndex(members, labels).nearest(queries)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
    np.testing.assert_array_equal(whole[0], loop_nearest(members, labels, queries)[0])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**31 - 1), st.integers(0, 8))
def test_nearest_matches_brute_force_where_a_band_is_shared(n, seed, keep):
    """A query that keeps ``keep`` of a member's values (in place) finds that member's similarity
    whenever it shares a whole band; the answer equals brute force over all members then."""
    rng = np.random.default_rng(seed)
    members = member_signatures(n, seed=seed)
    labels = rng.integers(0, 3, n)
    idx = MemberIndex(members, labels)
    target = rng.integers(0, n)
    q = rng.integers(0, 2**31 - 1, (1, members.shape[1])).astype(np.int32)
    q[0, :keep] = members[target, :keep]
    sim, lab = idx.nearest(q)
    want_sim, want_lab = brute_force(members, labels, q)
    if keep >= 2:  # the first band is shared
        assert sim[0] == want_sim[0] and lab[0] == want_lab[0]
        assert sim[0] >= keep / members.shape[1]
    else:
        assert sim[0] <= want_sim[0]


def test_exact_and_edited_training_texts_are_found():
    texts = [
        "a warm , funny and engaging film about a family",
        "the plot is thin and the acting is worse",
        "an unforgettable portrait of a city in decline",
    ]
    enc = dict(tokenizer_dir=packaged_minilm(), input_names=["input_ids", "attention_mask"], max_length=64)
    members = text_signatures(texts=texts, **enc)
    queries = [
        texts[1],
        "the plot is thin and the acting is even worse",
        "a completely unrelated sentence about cooking pasta tonight",
    ]
    q = text_signatures(texts=queries, **enc)
    for idx, sketches in (
        (MemberIndex(minhash(members), np.array([1, 0, 1])), None),  # an index built before the sketch
        (MemberIndex(minhash(members), np.array([1, 0, 1]), sketches=sketch(members)), sketch(q)),
    ):
        sim, lab = idx.nearest(minhash(q), sketches=sketches)
        assert sim[0] == 1.0 and lab[0] == 0
        assert sim[1] >= 0.5 and lab[1] == 0
        assert sim[2] < 0.5


def test_a_crop_of_a_training_text_scores_its_content_overlap():
    """A third of a training text's words shares about a third of its content tokens: with the
    sketch the index says so (exactly, for a text this short); 8 MinHash values cannot."""
    text = "an unforgettable portrait of a crumbling port city , its dockworkers , smugglers and dreamers"
    crop = "unforgettable crumbling dockworkers"
    enc = dict(tokenizer_dir=packaged_minilm(), input_names=["input_ids", "attention_mask"], max_length=64)
    m, q = text_signatures(texts=[text], **enc), text_signatures(texts=[crop], **enc)
    j, ok = sketch_jaccard(sketch(q), sketch(m))
    assert ok[0] and 0.1 < j[0] < 0.5
    idx = MemberIndex(minhash(m), np.array([1]), sketches=sketch(m))
    sim, _ = idx.nearest(minhash(q), sketches=sketch(q))
    assert sim[0] < 0.5  # the sketch's value, or a MinHash share below REFINE_FROM, or 0 (no band shared)


def test_empty_index_and_wrong_width():
    idx = MemberIndex(np.zeros((0, 8), np.int32), np.zeros(0, np.int64))
    sim, lab = idx.nearest(member_signatures(3))
    assert (sim == 0).all() and (lab == -1).all()
    full = MemberIndex(member_signatures(5), np.zeros(5))
    try:
        full.nearest(np.zeros((1, 4), np.int32))
    except ValueError as err:
        assert "4 values" in str(err)
    else:
        raise AssertionError("a signature of the wrong width must be refused")


def brute_partial(member_sketches: np.ndarray, labels: np.ndarray, queries: np.ndarray, cap: int, min_shared: int):
    """Every (query, member) pair scored on its own; candidates: members sharing a value held by at
    most ``cap`` members. Best: overlap, then shared values, then the lowest member."""
    holders: dict[int, int] = {}
    for row in member_sketches:
        for v in set(row[row != EMPTY].tolist()):
            holders[v] = holders.get(v, 0) + 1
    overlap, label = np.zeros(len(queries)), np.full(len(queries), -1)
    for i, q in enumerate(queries):
        rare = {v for v in q[q != EMPTY].tolist() if holders.get(v, 0) <= cap}
        best = (0.0, 0, 0)
        for m, row in enumerate(member_sketches):
            if not rare & set(row.tolist()):
                continue
            ov, shared = sketch_containment(q[None], row[None])
            if shared[0] >= min_shared and (ov[0], shared[0], -m) > best:
                best = (ov[0], shared[0], -m)
        if best[0] > 0:
            overlap[i], label[i] = best[0], labels[-best[2]]
    return overlap, label


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 120),
    st.integers(1, 40),
    st.integers(2, 40),
    st.sampled_from([1, 3, 256]),
    st.sampled_from([PARTIAL_MIN_SHARED, 1, 3]),
    st.integers(0, 2**31 - 1),
)
def test_partial_look_up_equals_brute_force(n_members, n_queries, alphabet, cap, min_shared, seed):
    """Random sketches over a small alphabet (many overlaps and ties), some queries crops of a
    member (a subset of its values) or padded members: the look-up equals scoring every pair, cap
    on common values included, in one pass and in row chunks."""
    from veil.python_backend import member_index

    rng = np.random.default_rng(seed)
    ms = random_sketches(rng, n_members, alphabet)
    qs = random_sketches(rng, n_queries, alphabet)
    for i in range(n_queries):
        src = ms[rng.integers(0, n_members)]
        vals = src[src != EMPTY]
        if rng.random() < 0.3 and len(vals):  # a crop: some of a member's values
            keep = np.sort(rng.choice(vals, rng.integers(1, len(vals) + 1), replace=False))
            qs[i] = EMPTY
            qs[i, : len(keep)] = keep
    labels = rng.integers(0, 4, n_members)
    mh = rng.integers(0, 5, (n_members, 8)).astype(np.int32)
    old_cap = member_index.POSTING_CAP
    try:
        member_index.POSTING_CAP = cap
        idx = MemberIndex(mh, labels, sketches=ms)
        got = idx.partial(qs, min_shared=min_shared)
        member_index.MAX_PAIRS, old_pairs = 7, member_index.MAX_PAIRS
        try:
            chunked = idx.partial(qs, min_shared=min_shared)
        finally:
            member_index.MAX_PAIRS = old_pairs
    finally:
        member_index.POSTING_CAP = old_cap
    want = brute_partial(ms, labels, qs, cap, min_shared)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(chunked[0], want[0])
    np.testing.assert_array_equal(chunked[1], want[1])


def test_crops_and_padding_of_a_training_text_are_partial_matches():
    """A crop of a training text (its content words all in the text) and the text padded with
    unrelated words (holding all of it) overlap it fully; a text sharing one word, or none, does
    not match; an index without sketches refuses the question."""
    text = "an unforgettable portrait of a crumbling port city , its dockworkers , smugglers and dreamers"
    queries = [
        "unforgettable crumbling dockworkers",
        f"{text} while the chef stirs risotto on a winter evening",
        "a crumbling recipe for lemon risotto tonight",
        "a recipe for lemon risotto",
    ]
    enc = dict(tokenizer_dir=packaged_minilm(), input_names=["input_ids", "attention_mask"], max_length=64)
    m, q = text_signatures(texts=[text], **enc), text_signatures(texts=queries, **enc)
    idx = MemberIndex(minhash(m), np.array([1]), sketches=sketch(m))
    overlap, label = idx.partial(sketch(q))
    assert overlap[0] == 1.0 and overlap[1] == 1.0 and (label[:2] == 1).all()
    assert overlap[2] == 0.0 and overlap[3] == 0.0 and (label[2:] == -1).all()
    sim, _ = idx.nearest(minhash(q), sketches=sketch(q))
    assert (sim[[0, 2, 3]] < 0.5).all()  # the Jaccard gate misses the crop
    try:
        MemberIndex(minhash(m), np.array([1])).partial(sketch(q))
    except ValueError as err:
        assert "sketches" in str(err)
    else:
        raise AssertionError("an index without sketches must refuse partial look-ups")


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_exact_slots_hold_the_same_pairs_as_the_expansion_in_a_fixed_shape(rows, columns, steps, seed):
    """The fixed-shape layout of a small batch and the expanded one of a large batch list the same
    real (row, column, position) pairs; the fixed one is rows x ``least`` for any counts up to
    ``least`` (budgets come in steps of PAIR_FLOOR), so its shape says nothing about what the rows
    matched; past it, the next step."""
    from veil.python_backend.member_index import PAIR_FLOOR, _pairs

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 12, (rows, columns))
    lo = rng.integers(0, 100, (rows, columns))
    least = steps * PAIR_FLOOR
    exact = _pairs(lo, counts, 5, least=least, exact=True)
    loose = _pairs(lo, counts, 5, least=PAIR_FLOOR, exact=False)

    def real_pairs(p):
        r, c, pos, real = p
        return sorted(zip(r[real].tolist(), c[real].tolist(), pos[real].tolist(), strict=True))

    assert real_pairs(exact) == real_pairs(loose)
    assert int(exact[3].sum()) == int(counts.sum())
    width = least if counts.sum(1).max() <= least else -(-counts.sum(1).max() // PAIR_FLOOR) * PAIR_FLOOR
    assert all(len(a) == rows * width for a in exact)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=80), st.integers(1, 3))
def test_compact_keeps_every_set_entry_in_a_shape_that_does_not_count_them(mask, steps):
    from veil.python_backend.member_index import PAIR_FLOOR, _compact

    mask, least = np.array(mask), steps * PAIR_FLOOR
    pick, picked = _compact(mask, least)
    assert sorted(pick[picked].tolist()) == np.flatnonzero(mask).tolist()  # none lost
    assert len(np.unique(pick)) == len(pick)
    if mask.sum() <= least:
        assert len(pick) == min(len(mask), least)
