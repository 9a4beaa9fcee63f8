"""Membership-leakage measures shared by calibration (defender side) and evaluation (attacker side).

Balanced accuracy of the best threshold is 0.5 + max(TPR - FPR) / 2, read off the ROC (:func:`roc`).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def best_threshold_accuracy(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Balanced accuracy of the best rule "member iff score >= t" (higher score = member)."""
    is_member = np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        return 0.5
    fpr, tpr = roc(scores, is_member)
    return float(0.5 + max(0.0, float(np.max(tpr - fpr))) / 2)


def classwise_threshold_accuracy(scores: np.ndarray, is_member: np.ndarray, groups: np.ndarray) -> float:
    """Balanced accuracy with one threshold per group (e.g. per class), chosen jointly.

    The overall objective TPR - FPR = sum_g (TP_g / N_m - FP_g / N_n) separates by group, so
    each group's threshold maximises its own term.
    """
    is_member = np.asarray(is_member, dtype=bool)
    n_m, n_n = is_member.sum(), (~is_member).sum()
    if n_m == 0 or n_n == 0:
        return 0.5
    total = 0.0
    for g in np.unique(groups):
        sel = groups == g
        m = is_member[sel]
        fpr, tpr = roc(scores[sel], m)  # cuts only between distinct scores: ties share a decision
        total += max(0.0, float(np.max(tpr * m.sum() / n_m - fpr * (~m).sum() / n_n)))
    return float(0.5 + total / 2)


def roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score (higher = member), from (0, 0) to (1, 1). Consecutive
    points bound one tied group; the straight line between them is random tie-breaking.

    The points of sklearn's ``roc_curve(..., drop_intermediate=False)`` (a test checks it), in plain
    numpy: the evaluation's bootstrap calls this some 10^5 times, and sklearn's input validation
    cost 2 ms a call, two thirds of the CI-sized evaluation's attack time."""
    m = np.asarray(is_member, dtype=bool)
    if m.all() or not m.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("attack scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s, m = s[order], m[order]
    last_of_run = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(m)[last_of_run]
    fp = np.cumsum(~m)[last_of_run]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr_target: float) -> float:
    """TPR at exactly ``fpr_target``, linearly interpolated inside the tied group that spans it
    (the expected TPR of breaking ties at random)."""
    fpr, tpr = roc(scores, is_member)
    i = int(np.searchsorted(fpr, fpr_target, side="right"))  # first point with fpr > target
    if i >= len(fpr):
        return float(tpr[-1])
    f0, f1, t0, t1 = fpr[i - 1], fpr[i], tpr[i - 1], tpr[i]
    return float(t0 + (t1 - t0) * (fpr_target - f0) / (f1 - f0))


def low_fpr_suite(probabilities: np.ndarray, labels: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """TPR at 1% FPR of the confidence and true-label-probability scores (tie-aware)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return {
        "confidence": tpr_at_fpr(p.max(1), is_member, 0.01),
        "loss": tpr_at_fpr(p[np.arange(len(p)), labels], is_member, 0.01),
    }


def label_only_floor(member_correct: np.ndarray, nonmember_correct: np.ndarray) -> float:
    """0.5 + (train acc - test acc) / 2: the gap attack no label-preserving defense can stop."""
    return float(0.5 + (np.mean(member_correct) - np.mean(nonmember_correct)) / 2)


def threshold_attack_suite(probabilities: np.ndarray, labels: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """Balanced accuracy of the simple score attacks an adaptive attacker fits first.

    Confidence (label-free) and true-label probability (loss), each global and class-wise.
    ``labels`` are the true labels (the attacker knows them for the rows it tests).
    """
    p = np.asarray(probabilities, dtype=np.float64)
    conf = p.max(1)
    pred = p.argmax(1)
    p_true = p[np.arange(len(p)), labels]
    return {
        "confidence": best_threshold_accuracy(conf, is_member),
        "confidence_classwise": classwise_threshold_accuracy(conf, is_member, pred),
        "loss": best_threshold_accuracy(p_true, is_member),
        "loss_classwise": classwise_threshold_accuracy(p_true, is_member, labels),
    }


def _fit_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold maximising TPR - FPR for "member iff score >= t" (the middle of ties)."""
    if is_member.all() or not is_member.any():
        return float("-inf")
    fpr, tpr, thr = roc_curve(is_member, scores)
    best = np.flatnonzero(tpr - fpr == np.max(tpr - fpr))
    return float(thr[best[len(best) // 2]])


def _crossfit_accuracy(scores: np.ndarray, is_member: np.ndarray, groups: np.ndarray, halves: np.ndarray) -> float:
    """Balanced accuracy of per-group thresholds fitted on one half and applied to the other, both ways."""
    accs = []
    for k in (0, 1):
        fit, score = halves != k, halves == k
        decide = np.zeros(score.sum(), dtype=bool)
        for g in np.unique(groups):
            t = _fit_threshold(scores[fit & (groups == g)], is_member[fit & (groups == g)])
            sel = groups[score] == g
            decide[sel] = scores[score][sel] >= t
        m = is_member[score]
        if m.all() or not m.any():
            continue
        accs.append(0.5 * (decide[m].mean() + (~decide[~m]).mean()))
    return float(np.mean(accs)) if accs else 0.5


def crossfit_threshold_suite(
    probabilities: np.ndarray, labels: np.ndarray, is_member: np.ndarray, *, seed: int = 0, repeats: int = 3
) -> dict[str, float]:
    """:func:`threshold_attack_suite` with thresholds fitted on one half of the rows and scored on the
    other (both ways, ``repeats`` seeded splits averaged): unbiased, so an output with many distinct
    values is not penalised against one with two the way an in-sample best threshold penalises it."""
    p = np.asarray(probabilities, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    conf, pred = p.max(1), p.argmax(1)
    p_true = p[np.arange(len(p)), labels]
    one = np.zeros(len(p), dtype=int)
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"confidence": [], "confidence_classwise": [], "loss": [], "loss_classwise": []}
    for _ in range(repeats):
        halves = np.empty(len(p), dtype=int)
        for sel in (np.flatnonzero(m), np.flatnonzero(~m)):  # stratified by membership
            halves[sel] = rng.permutation(len(sel)) % 2
        out["confidence"].append(_crossfit_accuracy(conf, m, one, halves))
        out["confidence_classwise"].append(_crossfit_accuracy(conf, m, pred, halves))
        out["loss"].append(_crossfit_accuracy(p_true, m, one, halves))
        out["loss_classwise"].append(_crossfit_accuracy(p_true, m, labels, halves))
    return {k: float(np.mean(v)) for k, v in out.items()}
