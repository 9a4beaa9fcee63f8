"""Crops of a text: what a gate-evading query keeps of it, for the defender and for the probe.

The member gate recognises a query whose words are (nearly) a training text's. An attacker who
knows that sends crops (a random share of the words in order, or a window) and averages the
outputs. The defender fits the partial-match map on its *own* crops of its training texts and of
its calibration non-members (:func:`defender_crops`, seeded apart from the probe's attacker).
"""

from __future__ import annotations

import hashlib

import numpy as np

DEFENDER_KEEP = (0.3, 0.5, 0.5, 0.7)
"""The defender's crops of each text: a third, two halves and 0.7 of the words, subsets and windows alternating."""
DEFENDER_CROPS = len(DEFENDER_KEEP)
DEFENDER_TEXTS = 2000
"""Texts per side the defender crops (and edits, :mod:`veil.export.edits`) at most (a seeded
sample, :func:`defender_sample`): 8,000 crops a side, about a minute each for MiniLM on 2 CPU cores."""


def crops(text: str, k: int, keep: float, kind: str, *, salt: str = "") -> list[str]:
    """``k`` seeded crops keeping ``keep`` of the words: a random subset in order (``kind``
    "subset"), or a window. The seed is the text, the kind, the share and ``salt``."""
    h = int.from_bytes(hashlib.sha256(f"{salt}{kind}{keep}:{text}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(h)
    words = text.split()
    n = len(words)
    m = max(1, round(keep * n))
    out = []
    for _ in range(k):
        if kind == "subset":
            out.append(" ".join(words[i] for i in np.sort(rng.choice(n, m, replace=False))))
        else:
            s = int(rng.integers(0, n - m + 1))
            out.append(" ".join(words[s : s + m]))
    return out


def defender_sample(n: int, *, seed: int, limit: int = DEFENDER_TEXTS) -> np.ndarray:
    """The rows of ``n`` texts the defender varies (crops, edits): all of them, or a sorted sample
    of ``limit`` seeded by ``seed``."""
    rows = np.arange(n)
    if n > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def defender_crops(texts: list[str], *, seed: int, limit: int = DEFENDER_TEXTS) -> tuple[list[str], np.ndarray]:
    """:data:`DEFENDER_CROPS` crops of each of at most ``limit`` texts (a sample seeded by ``seed``;
    crops salted "defender:", so no attacker in this repo draws the same ones): (the crops, flat;
    the index of each crop's text in ``texts``)."""
    rows = defender_sample(len(texts), seed=seed, limit=limit)
    flat = []
    for text in (texts[i] for i in rows):
        for j, keep in enumerate(DEFENDER_KEEP):
            flat += crops(text, 1, keep, "subset" if j % 2 == 0 else "window", salt=f"defender:{j}:")
    return flat, np.repeat(rows, DEFENDER_CROPS)
