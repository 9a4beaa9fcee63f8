from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.python_backend import fingerprint
from veil.python_backend.fingerprint import (
    EMPTY,
    MINHASH_SIZE,
    NEAR_MATCH,
    SIGNATURE_SIZE,
    SKETCH_SIZE,
    common_tokens,
    common_values,
    contained,
    logit_signature,
    minhash,
    near_duplicates,
    repeats,
    sequence_hash,
    sketch,
    sketch_jaccard,
    text_signature,
    without,
)


def sig(*token_lists: list[int], common: tuple[int, ...] = ()) -> np.ndarray:
    length = max(len(t) for t in token_lists)
    ids = np.zeros((len(token_lists), length), np.int64)
    mask = np.zeros_like(ids)
    for r, toks in enumerate(token_lists):
        ids[r, : len(toks)], mask[r, : len(toks)] = toks, 1
    return text_signature(ids, mask, special_ids=[101, 102], common_ids=common)


def test_same_token_set_same_signature_whatever_the_padding_and_specials():
    a = sig([101, 5, 6, 7, 102])
    b = sig([101, 7, 6, 5, 5, 102], list(range(200, 212)))  # padded to the longer row
    assert a.shape == (1, SIGNATURE_SIZE) and (a[0] == b[0]).all() and not (a[0] == b[1]).all()


def padded(*token_lists: list[int], width: int = 0) -> tuple[np.ndarray, np.ndarray]:
    length = max(width, *(len(t) for t in token_lists))
    ids = np.zeros((len(token_lists), length), np.int64)
    mask = np.zeros_like(ids)
    for r, toks in enumerate(token_lists):
        ids[r, : len(toks)], mask[r, : len(toks)] = toks, 1
    return ids, mask


def test_sequence_hash_tells_a_reordering_apart_and_ignores_padding():
    """The signature cannot tell a swap or a repeated word from the text (same token set); the
    sequence hash can, and it does not depend on the length bucket the row was padded to."""
    text, swapped, repeated = [101, 5, 6, 7, 102], [101, 6, 5, 7, 102], [101, 5, 5, 6, 7, 102]
    assert (sig(text)[0] == sig(swapped)[0]).all() and (sig(text)[0] == sig(repeated)[0]).all()
    h = sequence_hash(*padded(text, swapped, repeated))
    assert h.dtype == np.int64 and len(set(h.tolist())) == 3 and (h >= 0).all()
    assert sequence_hash(*padded(text, width=32))[0] == h[0]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=20), min_size=1, max_size=8))
def test_sequence_hash_is_a_function_of_the_real_tokens_in_order(rows):
    h = sequence_hash(*padded(*rows))
    alone = np.array([sequence_hash(*padded(r))[0] for r in rows])
    np.testing.assert_array_equal(h, alone)
    for r, x in zip(
        rows, h.tolist(), strict=True
    ):  # equal rows, equal hashes; distinct rows differ (no 64-bit collision here)
        assert all((x == y) == (r == q) for q, y in zip(rows, h.tolist(), strict=True))


def test_small_edit_is_a_near_duplicate_and_unrelated_text_is_not():
    base = list(range(1000, 1030))
    edited = [*base[:-1], 5000]  # one token of 30 replaced: Jaccard ~0.94
    other = list(range(2000, 2030))
    s = sig(base, edited, other)
    assert near_duplicates(s[1:2], s[0:1]).all()
    assert not near_duplicates(s[2:3], s[0:2]).any()


def test_repeats_inside_one_request_count():
    s = sig([1, 2, 3], [1, 2, 3], [4, 5, 6])
    assert near_duplicates(s, np.zeros((0, SIGNATURE_SIZE), np.int32)).tolist() == [False, True, False]


def test_logit_fallback_catches_exact_repeats_up_to_shift():
    z = np.array([[1.0, 2.0], [1.5, 2.5], [0.0, 3.0]], np.float32)
    s = logit_signature(z)
    assert (s[0] == s[1]).all() and not (s[0] == s[2]).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 80), st.integers(0, 40), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_near_duplicates_equals_the_summed_comparison(n, m, alphabet, seed):
    """The uint8 column-by-column count flags exactly what the [n, m, S] comparison summed did."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, alphabet, (n, SIGNATURE_SIZE)).astype(np.int32)
    recent = rng.integers(0, alphabet, (m, SIGNATURE_SIZE)).astype(np.int32)
    want = np.zeros(n, dtype=bool)
    a, b = sig[:, :MINHASH_SIZE], recent[:, :MINHASH_SIZE]
    if m:
        want |= ((a[:, None, :] == b[None, :, :]).sum(-1) >= NEAR_MATCH).any(1)
    if n > 1:
        want |= np.tril((a[:, None, :] == a[None, :, :]).sum(-1) >= NEAR_MATCH, k=-1).any(1)
    np.testing.assert_array_equal(near_duplicates(sig, recent), want)


NONE = np.zeros((0, SIGNATURE_SIZE), np.int32)


def test_sketch_is_the_smallest_content_hashes_of_the_set():
    """Order, repeats and padding do not matter; common and special tokens are left out; a text
    with more content tokens than the sketch keeps the smallest hashes (a prefix-closed sample)."""
    a = sig([101, 5, 6, 7, 102], common=(7,))
    b = sig([101, 7, 6, 5, 5, 6, 102], [3] * 9, common=(7,))
    assert (a[0] == b[0]).all()
    sketch = a[0, MINHASH_SIZE:]
    assert (sketch[:2] >= 0).all() and (sketch[2:] == EMPTY).all() and sketch[0] < sketch[1]
    assert (minhash(a) == minhash(sig([5, 6, 7]))).all()  # the MinHash part ignores ``common``
    long = sig(list(range(1000, 1040)))[0, MINHASH_SIZE:]
    assert (long >= 0).all() and (np.diff(long) > 0).all() and len(long) == SKETCH_SIZE
    # Each token alone: the 40 hashes; the sketch is the 16 smallest of them.
    each = sig(*[[t] for t in range(1000, 1040)])[:, MINHASH_SIZE]
    assert (long == np.sort(each)[:SKETCH_SIZE]).all()


def test_crops_of_one_text_are_contained_and_distinct_texts_are_not():
    text = list(range(1000, 1030))
    rng = np.random.default_rng(0)
    crops = [sorted(rng.choice(text, 10, replace=False).tolist()) for _ in range(8)]
    s = sig(*crops)
    flags = contained(s, NONE)
    assert not flags[0] and flags[4:].all()  # the first crop has nothing before it; later ones do
    assert not near_duplicates(s, NONE)[1:].all()  # crops are not near-duplicates of each other
    others = sig(*[list(range(2000 + 40 * i, 2030 + 40 * i)) for i in range(8)])
    assert not contained(others, s).any() and not repeats(others, s).any()
    # Common tokens shared by every text do not make distinct texts look contained.
    shared = [1, 2, 3, 4, 5, 6]
    topical = [shared + list(range(3000 + 10 * i, 3004 + 10 * i)) for i in range(8)]
    assert contained(sig(*topical), NONE)[1:].all()
    assert not contained(sig(*topical, common=tuple(shared)), NONE).any()


def test_empty_sketch_and_logit_fallback_are_never_contained():
    only_common = sig([1, 2], [1, 2], common=(1, 2))
    assert not contained(only_common, only_common).any()
    assert near_duplicates(only_common, NONE).tolist() == [False, True]  # the MinHash part still matches
    z = np.array([[1.0, 2.0], [1.5, 2.5]], np.float32)
    assert (logit_signature(z)[:, MINHASH_SIZE:] == EMPTY).all()
    assert not contained(logit_signature(z), logit_signature(z)).any()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_contained_equals_the_row_by_row_definition(n, m, alphabet, seed):
    """The one-``np.unique`` batch form equals: share of the row's sketch seen in the recent rows or
    an earlier row of the batch is >= CONTAINED_SHARE."""
    rng = np.random.default_rng(seed)

    def rows(k: int) -> np.ndarray:
        out = np.full((k, SIGNATURE_SIZE), EMPTY, np.int32)
        for r in range(k):
            size = int(rng.integers(0, SKETCH_SIZE + 1))
            out[r, MINHASH_SIZE : MINHASH_SIZE + size] = np.sort(
                rng.choice(alphabet * 4, size, replace=size > alphabet * 4)
            )
        return out

    s, recent = rows(n), rows(m)
    want = []
    seen = {int(v) for v in recent[:, MINHASH_SIZE:].ravel() if v != EMPTY}
    for row in s:
        values = [int(v) for v in row[MINHASH_SIZE:] if v != EMPTY]
        want.append(bool(values) and sum(v in seen for v in values) / len(values) >= 0.5)
        seen |= set(values)
    np.testing.assert_array_equal(contained(s, recent), np.array(want, dtype=bool))


def test_common_tokens_by_document_frequency():
    texts = [[1, 1, 1, 2], [2, 3], [2, 3, 4], [5]]
    assert common_tokens(texts, count=2) == [2, 3]  # token 1 is frequent in one text only
    assert common_tokens(texts, count=10) == [1, 2, 3, 4, 5]


def as_sketch(values: set[int]) -> np.ndarray:
    """A content sketch as the tokenizer writes it: the SKETCH_SIZE smallest values, ascending, padded."""
    row = np.full(SKETCH_SIZE, EMPTY, np.int64)
    small = sorted(values)[:SKETCH_SIZE]
    row[: len(small)] = small
    return row


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.integers(0, 60), max_size=40),
    st.sets(st.integers(0, 60), max_size=40),
)
def test_sketch_jaccard_is_the_jaccard_below_what_both_sketches_know(a, b):
    """Against the sets themselves: below the smaller of the two sketches' known-up-to values (a
    full sketch knows its set up to its largest value, a short one knows all of it) the estimate is
    the exact Jaccard similarity there; exact overall when neither sketch is full; undefined
    (and 0) when either set is empty."""
    est, defined = sketch_jaccard(as_sketch(a)[None], as_sketch(b)[None])
    inf = 1 << 62
    upto = min(
        sorted(a)[SKETCH_SIZE - 1] if len(a) >= SKETCH_SIZE else inf,
        sorted(b)[SKETCH_SIZE - 1] if len(b) >= SKETCH_SIZE else inf,
    )
    wa, wb = {x for x in a if x <= upto}, {x for x in b if x <= upto}
    want = len(wa & wb) / len(wa | wb) if wa | wb else 0.0
    assert defined[0] == (bool(a) and bool(b))
    assert est[0] == want
    if len(a) < SKETCH_SIZE and len(b) < SKETCH_SIZE and a | b:
        assert est[0] == len(a & b) / len(a | b)


def test_sketch_jaccard_estimates_long_texts_and_sketch_part_is_optional():
    """Bottom-k on sets far larger than the sketch: close to the true similarity on average; a
    MinHash-only row (an index built before the sketch) has no sketch part."""
    rng = np.random.default_rng(0)
    est = []
    for _ in range(400):
        pool = rng.choice(10_000, 120, replace=False)
        a, b = set(pool[:80].tolist()), set(pool[40:].tolist())  # J = 40 / 120
        est.append(sketch_jaccard(as_sketch(a)[None], as_sketch(b)[None])[0][0])
    assert abs(np.mean(est) - 1 / 3) < 0.03
    assert sketch(np.zeros((2, MINHASH_SIZE), np.int32)) is None
    assert sketch(np.zeros((2, SIGNATURE_SIZE), np.int32)).shape == (2, SKETCH_SIZE)


SKETCH_ROWS = st.lists(st.lists(st.integers(0, 30), max_size=SKETCH_SIZE, unique=True), min_size=0, max_size=40)


def _rows(sketches: list[list[int]]) -> np.ndarray:
    out = np.full((len(sketches), SIGNATURE_SIZE), EMPTY, np.int32)
    for i, values in enumerate(sketches):
        out[i, :MINHASH_SIZE] = i
        out[i, MINHASH_SIZE : MINHASH_SIZE + len(values)] = sorted(values)
    return out


@settings(max_examples=100, deadline=None)
@given(SKETCH_ROWS, st.floats(0.0, 1.0))
def test_common_values_are_the_values_in_enough_rows(sketches, share):
    got = common_values(_rows(sketches), min_share=share)
    need = max(2, int(np.ceil(share * len(sketches))))
    counts = {v: sum(v in s for s in sketches) for s in sketches for v in s}
    assert got.tolist() == sorted(v for v, c in counts.items() if c >= need)


@settings(max_examples=100, deadline=None)
@given(SKETCH_ROWS, st.lists(st.integers(0, 30), max_size=10, unique=True))
def test_without_drops_exactly_the_given_sketch_values(sketches, drop):
    rows = _rows(sketches)
    out = without(rows, np.asarray(sorted(drop), np.int32))
    np.testing.assert_array_equal(out[:, :MINHASH_SIZE], rows[:, :MINHASH_SIZE])  # MinHash untouched
    for i, values in enumerate(sketches):
        kept = [v for v in out[i, MINHASH_SIZE:] if v != EMPTY]
        assert sorted(kept) == sorted(set(values) - set(drop))
    assert (rows == _rows(sketches)).all()  # the input is not modified
    assert without(rows, None) is rows


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 40),
    width=st.sampled_from([1, 8, 16, 64]),
    seed=st.integers(0, 2**32 - 1),
    big=st.booleans(),
)
def test_sequence_hash_small_batch_path_is_the_numpy_one(rows, width, seed, big):
    """Small batches are hashed in Python integers (faster for the one-caller requests the step
    mostly sees); both paths give the same bits, over the whole int64 range of ids and any mask."""
    rng = np.random.default_rng(seed)
    hi = 2**63 - 1 if big else 30522
    ids = rng.integers(-hi if big else 0, hi, (rows, width), dtype=np.int64)
    mask = rng.random((rows, width)) < rng.uniform(0, 1)
    small = fingerprint._sequence_hash_small(ids, mask)
    np.testing.assert_array_equal(small, fingerprint._sequence_hash_numpy(ids, mask))
    np.testing.assert_array_equal(sequence_hash(ids, mask), small)
    assert (small >= 0).all()
