"""The one softmax both ensembles use, so untouched rows are bit-identical to the raw endpoint."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise float32 softmax computed in numpy (the same arithmetic on every platform)."""
    z = np.asarray(logits, dtype=np.float32)
    shifted = z - z.max(axis=-1, keepdims=True)
    e = np.exp(shifted, dtype=np.float32)
    return (e / e.sum(axis=-1, keepdims=True, dtype=np.float32)).astype(np.float32, copy=False)


def check_logits(logits: np.ndarray) -> None:
    """Raise ``ValueError`` naming the rows when logits are not a finite 2-D float batch."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D [batch, classes], got shape {list(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes, got {logits.shape[1]}")
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"non-finite logits (NaN or Inf) in row(s) {rows[:10].tolist()}" + (" ..." if len(rows) > 10 else "")
        )


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax computed in float64 and cast to float32 once (served vectors built from a
    decision, not from float32 arithmetic on the raw logits)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
