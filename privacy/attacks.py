"""Membership-inference attacks on served probability vectors, and the metrics reviewers expect.

Every attack turns (probabilities, true labels) into a membership score, higher = member. Score
attacks that need a threshold or a model fit it on *shadow* outputs (the attacker's own model,
whose outputs went through the same defense); threshold-free metrics (ROC AUC, TPR at low FPR)
and the best-threshold accuracy on the target (an upper bound on any threshold choice) are
reported beside the shadow-fitted accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

from veil.python_backend.leakage import best_threshold_accuracy, classwise_threshold_accuracy, label_only_floor

EPS = 1e-12


@dataclass
class Outputs:
    """Served outputs for a set of rows with their true labels and membership."""

    probabilities: np.ndarray  # [N, C]
    labels: np.ndarray  # [N]
    is_member: np.ndarray  # [N] bool

    def __post_init__(self) -> None:
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.is_member = np.asarray(self.is_member, dtype=bool)

    @property
    def correct(self) -> np.ndarray:
        return self.probabilities.argmax(1) == self.labels

    def floor(self) -> float:
        return label_only_floor(self.correct[self.is_member], self.correct[~self.is_member])


# --- scores ---------------------------------------------------------------------------------------


def true_class_probability(o: Outputs) -> np.ndarray:
    return o.probabilities[np.arange(len(o.labels)), o.labels]


def loss_score(o: Outputs) -> np.ndarray:
    """Negative cross-entropy loss (Yeom et al. 2018)."""
    return np.log(np.clip(true_class_probability(o), EPS, 1.0))


def confidence_score(o: Outputs) -> np.ndarray:
    """True-class confidence (Song & Mittal 2021 class-wise confidence attack)."""
    return true_class_probability(o)


def entropy_score(o: Outputs) -> np.ndarray:
    """Negative prediction entropy: members' outputs are sharper."""
    p = np.clip(o.probabilities, EPS, 1.0)
    return (p * np.log(p)).sum(1)


def modified_entropy_score(o: Outputs) -> np.ndarray:
    """Negative modified entropy (Song & Mittal 2021), which also uses the true label."""
    p = np.clip(o.probabilities, EPS, 1 - EPS)
    idx = np.arange(len(o.labels))
    py = p[idx, o.labels]
    mentr = -(1 - py) * np.log(py)
    other = -p * np.log(1 - p)
    other[idx, o.labels] = 0.0
    return -(mentr + other.sum(1))


def gap_score(o: Outputs) -> np.ndarray:
    """Label-only gap attack: member iff the prediction is correct."""
    return o.correct.astype(np.float64)


SCORES: dict[str, Callable[[Outputs], np.ndarray]] = {
    "loss": loss_score,
    "confidence": confidence_score,
    "entropy": entropy_score,
    "modified_entropy": modified_entropy_score,
}


# --- thresholds fitted on shadow outputs -----------------------------------------------------------


def fit_threshold(scores: np.ndarray, is_member: np.ndarray) -> float:
    """The threshold maximising TPR - FPR on the attacker's shadow data (member iff s >= t)."""
    if is_member.all() or not is_member.any():
        return float("-inf")
    fpr, tpr, thr = roc_curve(is_member, scores)
    return float(thr[int(np.argmax(tpr - fpr))])


def fit_classwise_thresholds(scores: np.ndarray, is_member: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    return np.array([fit_threshold(scores[labels == c], is_member[labels == c]) for c in range(classes)])


def balanced_accuracy(pred_member: np.ndarray, is_member: np.ndarray) -> float:
    return float(0.5 * (pred_member[is_member].mean() + (~pred_member[~is_member]).mean()))


# --- neural attack on sorted probability vectors ---------------------------------------------------


def attack_features(o: Outputs) -> np.ndarray:
    """Sorted probability vector plus the true-class probability and correctness."""
    p = np.sort(o.probabilities, axis=1)[:, ::-1]
    return np.column_stack([p, true_class_probability(o), o.correct.astype(np.float64)])


def neural_attack(shadow: Outputs, target: Outputs, *, seed: int = 0) -> np.ndarray:
    """Shokri-style attack model trained on defended shadow outputs; returns target scores."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(attack_features(shadow))
    model = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, early_stopping=True, random_state=seed)
    model.fit(scaler.transform(attack_features(shadow)), shadow.is_member)
    return model.predict_proba(scaler.transform(attack_features(target)))[:, 1]


# --- LiRA, offline ---------------------------------------------------------------------------------


def logit_confidence(o: Outputs) -> np.ndarray:
    """LiRA's logit-scaled true-class confidence phi = log(p / (1 - p))."""
    p = np.clip(true_class_probability(o), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def lira_offline(target_phi: np.ndarray, reference_phi: np.ndarray) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022) with OUT reference models only.

    reference_phi: [K, N] phi of each row under K reference models that never trained on it.
    Per-row mean, global variance (the recommended choice for few references). Higher = member.
    """
    mu = reference_phi.mean(0)
    sigma = max(float(reference_phi.std(0, ddof=1).mean()) if reference_phi.shape[0] > 1 else 1.0, 1e-3)
    return norm.cdf((target_phi - mu) / sigma)


# --- blind baseline --------------------------------------------------------------------------------


def text_features(texts: list[str]) -> np.ndarray:
    return np.array(
        [[len(t), len(t.split()), sum(not c.isalnum() and not c.isspace() for c in t), t.count(" ,")] for t in texts],
        dtype=np.float64,
    )


def blind_attack(shadow_texts: list[str], shadow_member: np.ndarray, target_texts: list[str]) -> np.ndarray:
    """Sees only the text (length, punctuation): near 50% unless the split leaks style."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(text_features(shadow_texts))
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(text_features(shadow_texts)), shadow_member)
    return model.predict_proba(scaler.transform(text_features(target_texts)))[:, 1]


# --- metrics ---------------------------------------------------------------------------------------


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr_target: float) -> float:
    fpr, tpr, _ = roc_curve(is_member, scores)
    ok = fpr <= fpr_target
    return float(tpr[ok].max()) if ok.any() else 0.0


@dataclass
class AttackResult:
    name: str
    accuracy: float  # balanced, threshold fitted on shadow data (or the attack's own decision)
    best_accuracy: float  # balanced, best threshold on the target (an upper bound)
    auc: float
    tpr_1: float  # TPR at 1% FPR
    tpr_01: float  # TPR at 0.1% FPR
    scores: np.ndarray

    @property
    def leakage(self) -> float:
        """The paper's privacy leakage rate 2 * (accuracy - 0.5), on the best-threshold accuracy."""
        return 2 * (self.best_accuracy - 0.5)

    def row(self) -> dict[str, float | str]:
        return {
            "attack": self.name,
            "accuracy": self.accuracy,
            "best_accuracy": self.best_accuracy,
            "leakage": self.leakage,
            "auc": self.auc,
            "tpr_at_1pct_fpr": self.tpr_1,
            "tpr_at_0.1pct_fpr": self.tpr_01,
        }


def score_result(
    name: str,
    scores: np.ndarray,
    is_member: np.ndarray,
    *,
    decisions: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> AttackResult:
    auc = float(roc_auc_score(is_member, scores)) if 0 < is_member.sum() < len(is_member) else 0.5
    best = (
        classwise_threshold_accuracy(scores, is_member, groups)
        if groups is not None
        else best_threshold_accuracy(scores, is_member)
    )
    acc = balanced_accuracy(decisions, is_member) if decisions is not None else best
    return AttackResult(
        name, acc, best, auc, tpr_at_fpr(scores, is_member, 0.01), tpr_at_fpr(scores, is_member, 0.001), scores
    )


def run_attacks(
    target: Outputs,
    shadow: Outputs,
    *,
    reference_phi: np.ndarray | None = None,
    target_texts: list[str] | None = None,
    shadow_texts: list[str] | None = None,
    seed: int = 0,
) -> list[AttackResult]:
    """The whole suite: (a) gap, (b) loss, (c) class-wise confidence / entropy / modified entropy,
    (d) neural, (e) LiRA offline, (f) blind."""
    classes = target.probabilities.shape[1]
    results = [score_result("gap", gap_score(target), target.is_member, decisions=target.correct)]
    s_loss, t_loss = loss_score(shadow), loss_score(target)
    results.append(
        score_result("loss", t_loss, target.is_member, decisions=t_loss >= fit_threshold(s_loss, shadow.is_member))
    )
    for name in ("confidence", "entropy", "modified_entropy"):
        s, t = SCORES[name](shadow), SCORES[name](target)
        thr = fit_classwise_thresholds(s, shadow.is_member, shadow.labels, classes)
        results.append(
            score_result(
                f"classwise_{name}", t, target.is_member, decisions=t >= thr[target.labels], groups=target.labels
            )
        )
    nn_scores = neural_attack(shadow, target, seed=seed)
    results.append(score_result("neural", nn_scores, target.is_member, decisions=nn_scores >= 0.5))
    if reference_phi is not None and len(reference_phi):
        results.append(
            score_result("lira_offline", lira_offline(logit_confidence(target), reference_phi), target.is_member)
        )
    if target_texts is not None and shadow_texts is not None:
        b = blind_attack(shadow_texts, shadow.is_member, target_texts)
        results.append(score_result("blind", b, target.is_member, decisions=b >= 0.5))
    return results


SCORE_BASED = (
    "loss",
    "classwise_confidence",
    "classwise_entropy",
    "classwise_modified_entropy",
    "neural",
    "lira_offline",
)
