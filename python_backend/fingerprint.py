"""Query fingerprints for adaptive intensity: MinHash signatures of the token set.

Probing attacks repeat a text or send small edits of it (a word added, swapped or reordered).
Two texts whose token sets have Jaccard similarity J share each MinHash value with probability J,
so "at least ``NEAR_MATCH`` of ``SIGNATURE_SIZE`` values equal" flags near-duplicates (J >= ~0.8
mostly flagged, J <= ~0.3 almost never). The tokenizer computes the signature; the defense step
only compares integers. Without a signature (``mia_defense`` called directly with logits) the
logits quantised to a fine grid stand in, which catches exact repeats only.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

SIGNATURE_SIZE = 8
NEAR_MATCH = 6
_PRIME = np.int64((1 << 31) - 1)
_RNG = np.random.default_rng(20251128)
_A = _RNG.integers(1, _PRIME, SIGNATURE_SIZE, dtype=np.int64)
_B = _RNG.integers(0, _PRIME, SIGNATURE_SIZE, dtype=np.int64)
_EMPTY = np.int64(_PRIME)


def text_signature(input_ids: np.ndarray, attention_mask: np.ndarray, *, special_ids: Iterable[int]) -> np.ndarray:
    """[n, L] token ids -> [n, SIGNATURE_SIZE] int32 MinHash of each row's set of real tokens."""
    ids = np.asarray(input_ids, dtype=np.int64)
    keep = np.asarray(attention_mask, dtype=bool) & ~np.isin(ids, list(special_ids))
    hashed = (ids[:, :, None] * _A + _B) % _PRIME  # [n, L, k]; ids < 2^31 so no overflow
    hashed = np.where(keep[:, :, None], hashed, _EMPTY)
    return hashed.min(axis=1).astype(np.int32)


def logit_signature(logits: np.ndarray, *, cell: float = 1e-3) -> np.ndarray:
    """Fallback [n, SIGNATURE_SIZE]: the shift-free logits on a fine grid, hashed (exact repeats)."""
    q = np.round((logits - logits.max(axis=1, keepdims=True)) / cell).astype(np.int64)
    h = np.full(len(q), 1469598103934665603, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in q.T.astype(np.uint64):
            h = (h ^ col) * np.uint64(1099511628211)
    sig = (h % np.uint64(_PRIME)).astype(np.int32)
    return np.repeat(sig[:, None], SIGNATURE_SIZE, axis=1)


def _matches(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] bool: the rows agree in >= NEAR_MATCH places. One uint8 count per pair,
    added column by column (a [n, m, S] comparison summed as int64 costs several times more)."""
    count = np.zeros((len(a), len(b)), dtype=np.uint8)
    for k in range(a.shape[1]):
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
