"""Membership metrics that cannot flatter a defense: tie-aware ROC, cross-fitting, bootstrap intervals.

- TPR at a fixed FPR interpolates linearly through tied groups: the expected TPR of breaking
  ties at random, so a score with few distinct values is neither all-in nor all-out.
- TPR@0.1%FPR is reported only when at least :data:`MIN_NONMEMBERS_FOR_01` non-members are
  scored (with fewer, it is TPR at zero false positives).
- Two attacker strengths, both always reported:
  *realistic*: fitted on shadow/reference outputs that went through the same served defense and
  scored on every target row; *upper bound*: cross-fitted on half of the target's true membership
  and scored on the other half, halves swapped, over :data:`CROSSFIT_SPLITS` independent halvings,
  metrics averaged. Never in-sample.
- Bootstrap intervals (percentile, stratified by membership) on TPR@1%FPR and attack accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_curve

from veil.python_backend.leakage import roc, tpr_at_fpr

__all__ = ["roc", "tpr_at_fpr"]  # tie-aware ROC: shared with the defender's calibration (leakage.py)

MIN_NONMEMBERS_FOR_01 = 5000
MIN_NONMEMBERS_FOR_1 = 100
"""TPR@1%FPR needs at least one whole false positive at 1% in every scored part; below that it is
TPR at zero false positives, dominated by chance (query attacks on small subsets, cross-fitted)."""
BOOTSTRAP = 200
CROSSFIT_SPLITS = 5
"""Independent random halvings the upper-bound attacker averages over. On a few hundred rows one
halving moves a learned attack's accuracy by several points (an output carrying exactly the
label's information scored 3 pt above label-only on one AG News seed); the mean over halvings keeps
that noise out of the comparison with label-only, which uses the same halvings."""
SPLIT_STRIDE = 104_729  # seed step between successive halvings: far from any other seed the suite uses

REALISTIC = "realistic"
UPPER = "upper_bound"
STRENGTHS = (REALISTIC, UPPER)


# --- ROC -------------------------------------------------------------------------------------------


def auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """ROC AUC (ties count one half: the trapezoid through tied groups)."""
    fpr, tpr = roc(scores, is_member)
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def balanced_accuracy(decisions: np.ndarray, is_member: np.ndarray) -> float:
    d, m = np.asarray(decisions, dtype=np.float64), np.asarray(is_member, dtype=bool)
    if m.all() or not m.any():
        return 0.5
    return float(0.5 * (d[m].mean() + (1 - d[~m]).mean()))


def best_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold t maximising TPR - FPR of "member iff score >= t" (fitting data only)."""
    is_member = np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        return float("inf")
    fpr, tpr, thr = roc_curve(is_member, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    j = np.flatnonzero(tpr - fpr == np.max(tpr - fpr))
    return float(thr[j[len(j) // 2]])  # the middle of equally good thresholds, not the most extreme


def in_sample_best_accuracy(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Best-threshold accuracy chosen on the scored rows themselves: optimistic; for tests/contrast only."""
    fpr, tpr = roc(scores, is_member)
    return float(0.5 + max(0.0, float(np.max(tpr - fpr))) / 2)


# --- one scored set --------------------------------------------------------------------------------


@dataclass
class Scored:
    """An attack's output on rows it never fitted on: continuous scores and hard decisions."""

    scores: np.ndarray
    decisions: np.ndarray
    is_member: np.ndarray

    def metrics(self) -> dict[str, float | None]:
        m = self.is_member
        return {
            "accuracy": balanced_accuracy(self.decisions, m),
            "auc": auc(self.scores, m),
            "tpr_1": tpr_at_fpr(self.scores, m, 0.01) if (~m).sum() >= MIN_NONMEMBERS_FOR_1 else None,
            "tpr_01": tpr_at_fpr(self.scores, m, 0.001) if (~m).sum() >= MIN_NONMEMBERS_FOR_01 else None,
        }

    def resample(self, rng: np.random.Generator) -> Scored:
        idx = _stratified_bootstrap(self.is_member, rng)
        return Scored(self.scores[idx], self.decisions[idx], self.is_member[idx])


def _stratified_bootstrap(is_member: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mem, non = np.flatnonzero(is_member), np.flatnonzero(~is_member)
    return np.r_[rng.choice(mem, len(mem)), rng.choice(non, len(non))]


@dataclass
class AttackEval:
    """One attack under one attacker strength: point estimates averaged over folds, 95% intervals."""

    attack: str
    strength: str
    accuracy: float
    auc: float
    tpr_1: float | None
    tpr_01: float | None
    accuracy_ci: tuple[float, float]
    tpr_1_ci: tuple[float, float] | None
    folds: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        return {
            "attack": self.attack,
            "strength": self.strength,
            "accuracy": self.accuracy,
            "auc": self.auc,
            "tpr_1": self.tpr_1,
            "tpr_01": self.tpr_01,
            "accuracy_ci": list(self.accuracy_ci),
            "tpr_1_ci": list(self.tpr_1_ci) if self.tpr_1_ci is not None else None,
            "fold_accuracy": [f["accuracy"] for f in self.folds],
        }


def summarise(
    attack: str,
    strength: str,
    parts: list[Scored],
    *,
    seed: int = 0,
    boots: int = BOOTSTRAP,
    per_draw: int | None = None,
) -> AttackEval:
    """Average each metric over ``parts`` (one for realistic, two folds per halving for the upper
    bound). Each bootstrap draw resamples one group of ``per_draw`` consecutive parts (one halving;
    default all parts), cycling through the groups, and averages them like the point estimate: the
    interval keeps the halvings' spread and costs what one halving does."""
    folds = [p.metrics() for p in parts]

    def mean(key: str) -> float | None:
        vals = [f[key] for f in folds]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    k = per_draw or len(parts)
    groups = [parts[i : i + k] for i in range(0, len(parts), k)]
    rng = np.random.default_rng(seed)
    acc_b, tpr_b = np.empty(boots), np.empty(boots)
    for b in range(boots):
        rs = [p.resample(rng) for p in groups[b % len(groups)]]
        acc_b[b] = np.mean([balanced_accuracy(r.decisions, r.is_member) for r in rs])
        tpr_b[b] = np.mean([tpr_at_fpr(r.scores, r.is_member, 0.01) for r in rs])
    ci = lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))  # noqa: E731
    tpr_ci = ci(tpr_b) if mean("tpr_1") is not None else None
    return AttackEval(
        attack, strength, mean("accuracy"), mean("auc"), mean("tpr_1"), mean("tpr_01"), ci(acc_b), tpr_ci, folds
    )


# --- the two attacker strengths --------------------------------------------------------------------

Fitted = Callable[[object], tuple[np.ndarray, np.ndarray]]
"""A fitted attack: rows -> (scores, decisions)."""
Fit = Callable[[object, np.ndarray], Fitted]
"""fit(rows, is_member) -> fitted attack. ``rows`` is any object with ``take(index)`` and ``len``."""


def halves(is_member: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the target rows, stratified by membership, seeded."""
    rng = np.random.default_rng(seed)
    a, b = [], []
    for sel in (np.flatnonzero(is_member), np.flatnonzero(~is_member)):
        sel = rng.permutation(sel)
        a.append(sel[: len(sel) // 2])
        b.append(sel[len(sel) // 2 :])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def realistic(
    name: str, fit: Fit, shadow, shadow_member, target, target_member, *, seed: int = 0, boots: int = BOOTSTRAP
) -> AttackEval:
    """Fitted on the attacker's shadow/reference rows (outputs through the same defense); scored on
    every target row. Target membership is used only to measure."""
    scores, decisions = fit(shadow, np.asarray(shadow_member, bool))(target)
    return summarise(
        name, REALISTIC, [Scored(scores, decisions, np.asarray(target_member, bool))], seed=seed, boots=boots
    )


def cross_fitted(
    name: str,
    fit: Fit,
    target,
    target_member,
    *,
    seed: int = 0,
    boots: int = BOOTSTRAP,
    splits: int = CROSSFIT_SPLITS,
) -> AttackEval:
    """Upper bound: fit on one half of the target's true membership, score the other half; swap;
    repeat over ``splits`` seeded halvings (the first is ``halves(member, seed)``); average. No row
    is scored by an attack that saw its membership. Parts come in (fold, swapped fold) pairs."""
    m = np.asarray(target_member, bool)
    parts = []
    for r in range(splits):
        a, b = halves(m, seed + SPLIT_STRIDE * r)
        for fit_idx, score_idx in ((a, b), (b, a)):
            scores, decisions = fit(target.take(fit_idx), m[fit_idx])(target.take(score_idx))
            parts.append(Scored(scores, decisions, m[score_idx]))
    return summarise(name, UPPER, parts, seed=seed, boots=boots, per_draw=2)


# --- ready-made fits -------------------------------------------------------------------------------


def threshold_fit(score: Callable[[object], np.ndarray], *, classwise: bool = False) -> Fit:
    """A score with one threshold (or one per true class, Song & Mittal) fitted on the fitting rows.
    The continuous score handed to the ROC is ``score - threshold[class]``, so class-wise
    thresholds are one ranking."""

    def fit(rows, member: np.ndarray) -> Fitted:
        s = score(rows)
        groups = rows.labels if classwise else np.zeros(len(s), int)
        thr = {g: best_threshold(s[groups == g], member[groups == g]) for g in np.unique(groups)}
        default = best_threshold(s, member)

        def apply(target) -> tuple[np.ndarray, np.ndarray]:
            t = score(target)
            g = target.labels if classwise else np.zeros(len(t), int)
            shift = np.array([thr.get(int(k), default) for k in g])
            shift = np.where(np.isfinite(shift), shift, default if np.isfinite(default) else 0.0)
            centred = t - shift
            return centred, centred >= 0

        return apply

    return fit


def fixed_decision_fit(score: Callable[[object], np.ndarray], threshold: float) -> Fit:
    """An attack with a rule fixed in advance (e.g. the gap attack: member iff correct)."""

    def fit(rows, member: np.ndarray) -> Fitted:
        return lambda target: (score(target).astype(np.float64), score(target) >= threshold)

    return fit


def excess(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else float(value - reference)
