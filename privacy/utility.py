"""Utility of served probabilities on held-out (non-member) rows: what a user of the scores feels.

Accuracy; error-detection AUROC of the top probability (does confidence rank right answers above
wrong ones); AURC (area under the selective-classification risk-coverage curve, lower is better);
ECE with 15 equal-width bins; Brier; NLL; against the raw output: mean total-variation distance,
share of rows bit-identical, and for C > 2 Kendall tau of the class order; number of distinct
output vectors; top-2 accuracy for C > 2.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score

ECE_BINS = 15
TINY = np.finfo(np.float64).tiny


def error_detection_auroc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of the top probability separating correct from wrong predictions (0.5 when all tie,
    or when every prediction is right or every one wrong)."""
    p = np.asarray(probabilities, np.float64)
    correct = p.argmax(1) == labels
    if correct.all() or not correct.any():
        return 0.5
    return float(roc_auc_score(correct, p.max(1)))


def aurc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Area under the risk-coverage curve: rows accepted in order of decreasing top probability,
    ties accepted as a group (their mean risk), risk averaged over coverage 1/N .. 1."""
    p = np.asarray(probabilities, np.float64)
    conf, wrong = p.max(1), (p.argmax(1) != labels).astype(np.float64)
    n = len(conf)
    order = np.argsort(-conf, kind="stable")
    conf, wrong = conf[order], wrong[order]
    # within a tied group every accepted row carries the group's mean error (random tie-breaking)
    _, start, counts = np.unique(-conf, return_index=True, return_counts=True)
    group_err = np.add.reduceat(wrong, start) / counts
    expected = np.repeat(group_err, counts)
    risk = np.cumsum(expected) / np.arange(1, n + 1)
    return float(risk.mean())


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top probability, equal-width bins on [0, 1]."""
    p = np.asarray(probabilities, np.float64)
    conf, correct = p.max(1), (p.argmax(1) == labels).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)  # (k/B, (k+1)/B]
    total = 0.0
    for b in np.unique(idx):
        sel = idx == b
        total += sel.sum() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total / len(conf))


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    p = np.asarray(probabilities, np.float64)
    onehot = np.eye(p.shape[1])[labels]
    return float(((p - onehot) ** 2).sum(1).mean())


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood; an exact zero on the true class costs -log(tiny) (~708)."""
    p = np.asarray(probabilities, np.float64)
    return float(-np.log(np.maximum(p[np.arange(len(p)), labels], TINY)).mean())


def top2_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    top2 = np.argsort(-np.asarray(probabilities, np.float64), 1, kind="stable")[:, :2]
    return float((top2 == np.asarray(labels)[:, None]).any(1).mean())


def rank_agreement(probabilities: np.ndarray, raw: np.ndarray) -> float:
    """Mean Kendall tau (tau-b) between each row's class scores and the raw output's."""
    taus = []
    for a, b in zip(np.asarray(probabilities, np.float64), np.asarray(raw, np.float64), strict=True):
        t = kendalltau(a, b).statistic
        if np.isnan(t):  # a constant vector: agrees only with another constant vector
            t = 1.0 if np.ptp(a) == 0 and np.ptp(b) == 0 else 0.0
        taus.append(t)
    return float(np.mean(taus))


def utility(probabilities: np.ndarray, labels: np.ndarray, raw: np.ndarray | None = None) -> dict[str, float]:
    """Every utility metric for one defense's outputs on held-out rows."""
    p = np.asarray(probabilities)
    labels = np.asarray(labels, np.int64)
    out = {
        "accuracy": float((p.argmax(1) == labels).mean()),
        "error_detection_auroc": error_detection_auroc(p, labels),
        "aurc": aurc(p, labels),
        "ece": ece(p, labels),
        "brier": brier(p, labels),
        "nll": nll(p, labels),
        "distinct_outputs": len(np.unique(np.asarray(p, np.float32), axis=0)),
    }
    if raw is not None:
        r = np.asarray(raw)
        out["tv_to_raw"] = float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(r, np.float64)).sum(1).mean())
        out["identical_to_raw"] = float((np.asarray(p, np.float32) == np.asarray(r, np.float32)).all(1).mean())
    if p.shape[1] > 2:
        out["top2_accuracy"] = top2_accuracy(p, labels)
        if raw is not None:
            out["rank_agreement"] = rank_agreement(p, raw)
    return out


UTILITY_KEYS = (
    "accuracy",
    "error_detection_auroc",
    "aurc",
    "ece",
    "brier",
    "nll",
    "tv_to_raw",
    "identical_to_raw",
    "distinct_outputs",
    "top2_accuracy",
    "rank_agreement",
)
