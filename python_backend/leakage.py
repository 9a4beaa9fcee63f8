"""Membership-leakage measures shared by calibration (defender side) and evaluation (attacker side).

Balanced accuracy of the best threshold is 0.5 + max(TPR - FPR) / 2, read off sklearn's ROC.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def best_threshold_accuracy(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Balanced accuracy of the best rule "member iff score >= t" (higher score = member)."""
    is_member = np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        return 0.5
    fpr, tpr, _ = roc_curve(is_member, scores)
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
        s, m = scores[sel], is_member[sel]
        order = np.argsort(-s, kind="stable")
        s, m = s[order], m[order]
        gain = np.cumsum(np.where(m, 1.0 / n_m, -1.0 / n_n))
        # Only cut between distinct scores (ties must share a decision).
        last_of_run = np.r_[s[1:] != s[:-1], True]
        total += max(0.0, float(gain[last_of_run].max()))
    return float(0.5 + total / 2)


def roc(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score (higher = member), from (0, 0) to (1, 1). Consecutive
    points bound one tied group; the straight line between them is random tie-breaking."""
    is_member = np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = roc_curve(is_member, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    return fpr, tpr


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
