from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.python_backend.fingerprint import (
    NEAR_MATCH,
    SIGNATURE_SIZE,
    logit_signature,
    near_duplicates,
    text_signature,
)


def sig(*token_lists: list[int]) -> np.ndarray:
    length = max(len(t) for t in token_lists)
    ids = np.zeros((len(token_lists), length), np.int64)
    mask = np.zeros_like(ids)
    for r, toks in enumerate(token_lists):
        ids[r, : len(toks)], mask[r, : len(toks)] = toks, 1
    return text_signature(ids, mask, special_ids=[101, 102])


def test_same_token_set_same_signature_whatever_the_padding_and_specials():
    a = sig([101, 5, 6, 7, 102])
    b = sig([101, 7, 6, 5, 5, 102], list(range(200, 212)))  # padded to the longer row
    assert a.shape == (1, SIGNATURE_SIZE) and (a[0] == b[0]).all() and not (a[0] == b[1]).all()


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
    if m:
        want |= ((sig[:, None, :] == recent[None, :, :]).sum(-1) >= NEAR_MATCH).any(1)
    if n > 1:
        want |= np.tril((sig[:, None, :] == sig[None, :, :]).sum(-1) >= NEAR_MATCH, k=-1).any(1)
    np.testing.assert_array_equal(near_duplicates(sig, recent), want)
