"""Word edits of a text: what a probing caller sends, and what the defender fits its near-copy map on.

An attacker averages a text's outputs over small edits (a word deleted, two adjacent words
swapped, a word repeated: the label-only attacks of Choquette-Choo et al. 2021, word level). The
member gate matches such an edit to its training text, but the edit is not the text: the defender
fits a map of its own for them (:func:`veil.python_backend.calibrate.fit_near`) on
:func:`defender_edits`, salted apart from every attacker in this repo.
"""

from __future__ import annotations

import hashlib

import numpy as np

from veil.export.crops import DEFENDER_TEXTS, defender_sample

EDIT_KINDS = ("delete", "swap", "duplicate")
DEFENDER_EDITS = 4
"""Edits per text the defender fits the near-copy map on (one of each kind, then a deletion)."""


def edits(text: str, k: int, seed: int | str) -> list[str]:
    """``k`` seeded word-level edits of ``text``, cycling deletion, adjacent swap, duplication
    (``seed``: an int, or a string salting a party's edits apart from an attacker's)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(h)
    words = text.split()
    out = []
    for j in range(k):
        w = list(words)
        kind = EDIT_KINDS[j % len(EDIT_KINDS)]
        if kind == "delete" and len(w) > 1:
            del w[int(rng.integers(len(w)))]
        elif kind == "swap" and len(w) > 1:
            i = int(rng.integers(len(w) - 1))
            w[i], w[i + 1] = w[i + 1], w[i]
        elif w:
            i = int(rng.integers(len(w)))
            w.insert(i, w[i])
        out.append(" ".join(w) if w else text)
    return out


def defender_edits(texts: list[str], *, seed: int, limit: int = DEFENDER_TEXTS) -> tuple[list[str], np.ndarray]:
    """:data:`DEFENDER_EDITS` edits of each of at most ``limit`` texts (:func:`defender_sample`;
    edits salted "defender:{seed}"): (the edits, flat; the index of each edit's text in ``texts``)."""
    rows = defender_sample(len(texts), seed=seed, limit=limit)
    flat = [e for i in rows for e in edits(texts[i], DEFENDER_EDITS, f"defender:{seed}")]
    return flat, np.repeat(rows, DEFENDER_EDITS)
