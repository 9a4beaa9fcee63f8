"""Query-based attacks: augmentation (edited copies of a text) and repeated identical queries.

Augmentation (label-only attacks of Choquette-Choo et al. 2021, word level): each text gets
``edits`` seeded word-level edits (deletion, swap of adjacent words, duplication:
:func:`veil.export.edits.edits`), all queried; per text the attacker aggregates the share of edits
keeping the true label and the mean and min true-class probability. Members' labels and
confidences survive edits more often.

Repeated queries: each text sent ``repeats`` times; a served output that differs between repeats
is itself a finding (outputs must be deterministic); the aggregate is the mean and spread.

The aggregates are per-row features in ``Outputs.extra``; the fits below feed them to the same
two attacker strengths as the single-query attacks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from veil.export.edits import edits
from veil.privacy.attacks import TINY, Outputs, learned_fit, loss_score
from veil.privacy.metrics import Fit, threshold_fit


def expand(texts: list[str], k: int, seed: int | str) -> tuple[list[str], np.ndarray]:
    """All edits of all texts in one list, and each edit's row index."""
    flat, group = [], []
    for i, t in enumerate(texts):
        flat += edits(t, k, seed)
        group += [i] * k
    return flat, np.asarray(group)


def _true_prob(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.asarray(probs, np.float64)[np.arange(len(labels)), labels]


def augmentation_features(probs: np.ndarray, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Aggregates over each text's ``k`` consecutive edit rows in ``probs`` ([N * k, C])."""
    n = len(labels)
    rows = np.repeat(labels, k)
    kept = (np.asarray(probs).argmax(1) == rows).reshape(n, k)
    pt = _true_prob(probs, rows).reshape(n, k)
    return {
        "aug_keep": kept.mean(1),
        "aug_mean": np.log(np.maximum(pt.mean(1), TINY)),
        "aug_min": np.log(np.maximum(pt.min(1), TINY)),
    }


def repeat_features(probs: np.ndarray, labels: np.ndarray, r: int) -> tuple[dict[str, np.ndarray], int]:
    """Aggregates over each text's ``r`` identical queries, and the number of texts whose repeats
    were not bit-identical (should be 0)."""
    n = len(labels)
    p = np.asarray(probs, np.float32).reshape(n, r, -1)
    differ = int((p != p[:, :1]).any(axis=(1, 2)).sum())
    pt = _true_prob(p.reshape(n * r, -1), np.repeat(labels, r)).reshape(n, r)
    feats = {"rep_mean": np.log(np.maximum(pt.mean(1), TINY)), "rep_spread": pt.max(1) - pt.min(1)}
    return feats, differ


def _extra(key: str) -> Callable[[Outputs], np.ndarray]:
    return lambda o: np.asarray(o.extra[key], np.float64)


def _aug_vector(o: Outputs) -> np.ndarray:
    return np.column_stack([o.extra["aug_keep"], o.extra["aug_mean"], o.extra["aug_min"], loss_score(o)])


def augmentation_suite(seed: int = 0) -> dict[str, Fit]:
    return {
        "aug_keep": threshold_fit(_extra("aug_keep")),
        "aug_mean": threshold_fit(_extra("aug_mean"), classwise=True),
        "aug_min": threshold_fit(_extra("aug_min"), classwise=True),
        "aug_hgb": learned_fit(_aug_vector, seed=seed),
    }


def repeat_suite(seed: int = 0) -> dict[str, Fit]:
    return {
        "repeat_mean": threshold_fit(_extra("rep_mean"), classwise=True),
        "repeat_hgb": learned_fit(lambda o: np.column_stack([o.extra["rep_mean"], o.extra["rep_spread"]]), seed=seed),
    }
