"""Query fingerprints for adaptive intensity and the member gate: two parts in one int32 row.

Columns ``[:MINHASH_SIZE]``, MinHash of the token set: probing attacks repeat a text or send small
edits of it (a word added, swapped or reordered). Two texts whose token sets have Jaccard
similarity J share each MinHash value with probability J, so "at least ``NEAR_MATCH`` of
``MINHASH_SIZE`` values equal" flags near-duplicates (J >= ~0.8 mostly flagged, J <= ~0.3 almost
never). The member gate indexes these columns too.

Columns ``[MINHASH_SIZE:]``, the content sketch: the ``SKETCH_SIZE`` smallest hashes of the text's
*content* tokens (every real token except the ``common`` ones: the defender's most frequent tokens
in its own training texts), ascending, padded with -1. Crops of one text (a random third of its
words, a window) are not near-duplicates of each other (J ~ 1/3), but each is mostly *contained*
in what the caller sent just before: :func:`contained` flags a row when at least
``CONTAINED_SHARE`` of its sketch appeared in recent rows. Common tokens are left out so that
distinct texts on one topic do not look contained (docs/evaluation.md: a benign caller's rows are
not coarsened, a crop-probing caller's are).

Adaptive intensity also leaves out the content values that are frequent in the defender's
*calibration non-members* (:func:`common_values`, stored in the defense artifact; :func:`without`):
what is left are a text's rare words, which crops of one text repeat and distinct texts on one
topic rarely do, so the caller's ring can be long enough to hold several crops of each of many
interleaved texts. Calibration non-members, not training texts: the mask must not depend on
whether a query's text is a member.

A third value, apart from the signature (:func:`sequence_hash`, its own wire tensor): a hash of
the token ids the classifier sees, in order. MinHash and sketch see token *sets*, so an edit that
swaps or repeats words of a training text looks like the text itself; the member gate tells exact
copies (which get exactly the training text's output) from such edits by this hash.

The tokenizer computes all three; the defense step only compares integers. Without a signature
(``mia_defense`` called directly with logits) the logits quantised to a fine grid stand in for the
MinHash, which catches exact repeats only, with an empty sketch.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MINHASH_SIZE = 8
NEAR_MATCH = 6
SKETCH_SIZE = 16
SIGNATURE_SIZE = MINHASH_SIZE + SKETCH_SIZE
CONTAINED_SHARE = 0.5
COMMON_TOKENS = 50
"""How many of the training texts' most frequent tokens the content sketch leaves out."""
EMPTY = -1
_PRIME = np.int64((1 << 31) - 1)
_RNG = np.random.default_rng(20251128)
_A = _RNG.integers(1, _PRIME, MINHASH_SIZE + 1, dtype=np.int64)
_B = _RNG.integers(0, _PRIME, MINHASH_SIZE + 1, dtype=np.int64)
"""One (a, b) per MinHash value, the last pair for the content sketch."""
_NONE = np.int64(_PRIME)


def text_signature(
    input_ids: np.ndarray, attention_mask: np.ndarray, *, special_ids: Iterable[int], common_ids: Iterable[int] = ()
) -> np.ndarray:
    """[n, L] token ids -> [n, SIGNATURE_SIZE] int32: MinHash of each row's set of real tokens, then
    the content sketch (the smallest hashes of its real tokens not in ``common_ids``)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    real = np.asarray(attention_mask, dtype=bool) & ~np.isin(ids, list(special_ids))
    hashed = (ids[:, :, None] * _A + _B) % _PRIME  # [n, L, k + 1]; ids < 2^31 so no overflow
    minhash = np.where(real[:, :, None], hashed[:, :, :MINHASH_SIZE], _NONE).min(axis=1)
    content = np.where(real & ~np.isin(ids, list(common_ids)), hashed[:, :, MINHASH_SIZE], _NONE)
    content = np.sort(content, axis=1)
    content[:, 1:][content[:, 1:] == content[:, :-1]] = _NONE  # a repeated token is one element of the set
    content = np.sort(content, axis=1)[:, :SKETCH_SIZE]
    sketch = np.full((len(ids), SKETCH_SIZE), EMPTY, dtype=np.int64)
    sketch[:, : content.shape[1]] = np.where(content < _NONE, content, EMPTY)
    return np.concatenate([minhash, sketch], axis=1).astype(np.int32)


NO_SEQUENCE = -1
"""The sequence hash of a row that carries none (logits sent without the tokenizer's outputs)."""
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


SMALL_HASH_ROWS = 12
"""Batches up to this many rows are hashed in Python integers (:func:`sequence_hash`): the numpy
loop pays a few microseconds per token position whatever the rows, so one 64-token row cost
117 us against 9.4 us (the crossover is near 14 rows of 64 tokens)."""

_U64 = (1 << 64) - 1


def sequence_hash(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """[n, L] token ids -> [n] int64 in [0, 2^63): FNV-1a over each row's real token ids in order
    (padding ignored, so the length bucket does not matter). Equal exactly when the classifier
    sees the same tokens (up to 64-bit collisions)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    real = np.asarray(attention_mask, dtype=bool)
    if ids.ndim == 2 and len(ids) <= SMALL_HASH_ROWS:
        return _sequence_hash_small(ids, real)
    return _sequence_hash_numpy(ids, real)


def _sequence_hash_small(ids: np.ndarray, real: np.ndarray) -> np.ndarray:
    """:func:`sequence_hash` row by row in Python integers (the same bits)."""
    offset, prime = int(_FNV_OFFSET), int(_FNV_PRIME)
    out = []
    for row, mask in zip(ids.tolist(), real.tolist(), strict=True):
        h = offset
        for token, on in zip(row, mask, strict=True):
            if on:
                h = ((h ^ (token & _U64)) * prime) & _U64
        out.append(h >> 1)
    return np.array(out, dtype=np.int64)


def _sequence_hash_numpy(ids: np.ndarray, real: np.ndarray) -> np.ndarray:
    """:func:`sequence_hash` position by position over the whole batch (large batches)."""
    ids = ids.astype(np.uint64)
    h = np.full(len(ids), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ids.shape[1] if ids.ndim == 2 else 0):
            h = np.where(real[:, j], (h ^ ids[:, j]) * _FNV_PRIME, h)
    return (h >> np.uint64(1)).astype(np.int64)


def common_tokens(token_sets: Iterable[Iterable[int]], *, count: int = COMMON_TOKENS) -> list[int]:
    """The ``count`` tokens in most texts (document frequency; ties: lower id), for the sketch."""
    df: dict[int, int] = {}
    for tokens in token_sets:
        for t in set(tokens):
            df[t] = df.get(t, 0) + 1
    return sorted(sorted(df, key=lambda t: (-df[t], t))[:count])


def logit_signature(logits: np.ndarray, *, cell: float = 1e-3) -> np.ndarray:
    """Fallback [n, SIGNATURE_SIZE]: the shift-free logits on a fine grid, hashed (exact repeats)."""
    q = np.round((logits - logits.max(axis=1, keepdims=True)) / cell).astype(np.int64)
    h = np.full(len(q), 1469598103934665603, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in q.T.astype(np.uint64):
            h = (h ^ col) * np.uint64(1099511628211)
    sig = (h % np.uint64(_PRIME)).astype(np.int32)
    out = np.full((len(q), SIGNATURE_SIZE), EMPTY, dtype=np.int32)
    out[:, :MINHASH_SIZE] = sig[:, None]
    return out


_BROADCAST_PAIRS = 256


def _matches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] bool: the MinHash parts agree in >= NEAR_MATCH places. One uint8 count per
    pair, added column by column (a [n, m, S] comparison summed as int64 costs several times more),
    except for a small comparison (one request against a ring), where one broadcast is 4x cheaper."""
    if len(a) * len(b) <= _BROADCAST_PAIRS:
        return (a[:, None, :MINHASH_SIZE] == b[None, :, :MINHASH_SIZE]).sum(2) >= NEAR_MATCH
    count = np.zeros((len(a), len(b)), dtype=np.uint8)
    for k in range(MINHASH_SIZE):
        count += a[:, None, k] == b[None, :, k]
    return count >= NEAR_MATCH


def near_duplicates(signatures: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """[n] bool: row matches a ``recent`` signature or an earlier row, in >= NEAR_MATCH places."""
    n = len(signatures)
    hits = np.zeros(n, dtype=bool)
    if len(recent):
        hits |= _matches(signatures, recent).any(1)
    if n > 1:
        hits |= np.tril(_matches(signatures, signatures), k=-1).any(1)
    return hits


def contained(signatures: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """[n] bool: at least ``CONTAINED_SHARE`` of the row's sketch values are in a ``recent`` row's
    sketch or an earlier row's (an empty sketch is never contained). One row (the usual request)
    is compared against the ring directly; a batch sorts every value once (by value, then row,
    the recent rows counting as row -1): a value is seen at row i when its first row is < i."""
    n = len(signatures)
    if n == 0:
        return np.zeros(0, dtype=bool)
    sketch = np.asarray(signatures)[:, MINHASH_SIZE:]
    ring = np.asarray(recent)[:, MINHASH_SIZE:].ravel()
    valid = sketch != EMPTY
    size = valid.sum(1)
    if n == 1:
        if not len(ring) or not size[0]:
            return np.zeros(1, dtype=bool)
        seen = (sketch[0, valid[0], None] == ring[None, :]).any(1).sum()
        return np.array([seen / size[0] >= CONTAINED_SHARE])
    values = np.concatenate([ring, sketch.ravel()])
    rows = np.concatenate([np.full(len(ring), -1), np.repeat(np.arange(n), sketch.shape[1])])
    # One int64 key sorts by value, then row (values < 2^31, rows -1..n-1): cheaper than a lexsort.
    order = np.argsort(values.astype(np.int64) * (n + 1) + (rows + 1), kind="stable")
    v = values[order]
    start = np.r_[True, v[1:] != v[:-1]]
    first = rows[order][np.maximum.accumulate(np.where(start, np.arange(len(v)), 0))]  # per sorted element
    first_row = np.empty(len(values), dtype=np.int64)
    first_row[order] = first
    seen = (first_row[len(ring) :].reshape(sketch.shape) < np.arange(n)[:, None]) & valid
    return (size > 0) & (seen.sum(1) / np.maximum(size, 1) >= CONTAINED_SHARE)


def repeats(signatures: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """[n] bool: what adaptive intensity counts as probing: a near-duplicate or a contained row."""
    return near_duplicates(signatures, recent) | contained(signatures, recent)


def common_values(signatures: np.ndarray, *, min_share: float) -> np.ndarray:
    """Sorted content-sketch values present in at least ``min_share`` of the rows (and in at least 2)."""
    part = np.asarray(signatures)[:, MINHASH_SIZE:]
    if not len(part):
        return np.zeros(0, dtype=np.int32)
    # A value counts once per row (a sketch holds distinct values).
    values, rows = np.unique(part[part != EMPTY], return_counts=True)
    need = max(2, int(np.ceil(min_share * len(part))))
    return values[rows >= need].astype(np.int32)


def without(signatures: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """``signatures`` with the content-sketch values in ``values`` (sorted) replaced by EMPTY; the
    MinHash part is kept. ``values`` None or empty: unchanged."""
    sig = np.asarray(signatures)
    if values is None or not len(values) or not len(sig):
        return sig
    part = sig[:, MINHASH_SIZE:]
    # ``values`` is sorted: one binary search per sketch value (the served step calls this per request).
    at = np.minimum(np.searchsorted(values, part), len(values) - 1)
    drop = (np.asarray(values)[at] == part) & (part != EMPTY)
    if not drop.any():
        return sig
    out = sig.copy()
    out[:, MINHASH_SIZE:][drop] = EMPTY
    return out


def minhash(signatures: np.ndarray) -> np.ndarray:
    """The MinHash part (what the member index keys on)."""
    return np.asarray(signatures)[:, :MINHASH_SIZE]


def sketch(signatures: np.ndarray) -> np.ndarray | None:
    """The content-sketch part, or None for MinHash-only rows (an artifact built before it)."""
    s = np.asarray(signatures)
    return s[:, MINHASH_SIZE:] if s.ndim == 2 and s.shape[1] == SIGNATURE_SIZE else None


def sketch_overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs of content sketches [P, SKETCH_SIZE] -> (shared values, values of ``a``, values of
    ``b``), each counted below what both sketches know.

    A sketch with fewer than ``SKETCH_SIZE`` values is its whole set; a full one knows its set only
    up to its largest value. Below the smaller of the two known-up-to values both sets are known
    (bottom-k): every count is exact when neither sketch is full (most SST-2 texts)."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    va, vb = a != EMPTY, b != EMPTY
    inf = np.int64(1) << 62
    upto = np.minimum(np.where(va.all(1), a.max(1), inf), np.where(vb.all(1), b.max(1), inf))[:, None]
    ka, kb = va & (a <= upto), vb & (b <= upto)
    k = a.shape[1]
    # Values unknown or beyond the window get distinct negative stand-ins, so only shared values pair up.
    both = np.concatenate([np.where(ka, a, -1 - np.arange(k)), np.where(kb, b, -1 - k - np.arange(k))], axis=1)
    both.sort(axis=1)
    return (both[:, 1:] == both[:, :-1]).sum(1), ka.sum(1), kb.sum(1)


def sketch_jaccard(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs of content sketches [P, SKETCH_SIZE] -> (Jaccard similarity of the content-token
    sets, whether it is defined: both sketches non-empty), from :func:`sketch_overlap`: exact
    when neither sketch is full, a bottom-k estimate otherwise. 8 MinHash values estimate J with a
    standard error of ~0.17 at J = 1/3: a crop keeping a third of a training text's words passed a
    gate at 0.5 a quarter of the time."""
    inter, na, nb = sketch_overlap(a, b)
    union = na + nb - inter
    defined = (np.asarray(a) != EMPTY).any(1) & (np.asarray(b) != EMPTY).any(1)
    return inter / np.maximum(union, 1), defined


def sketch_containment(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs of content sketches -> (overlap coefficient |A & B| / min(|A|, |B|), shared
    values), from :func:`sketch_overlap`: 1 when either set holds the other (a crop of a text,
    or the text padded with other words), whatever their sizes. 0 where either is empty."""
    inter, na, nb = sketch_overlap(a, b)
    return inter / np.maximum(np.minimum(na, nb), 1), inter
