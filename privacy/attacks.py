"""Membership-inference attacks on served probability vectors.

Each attack is a *fit* (see :mod:`veil.privacy.metrics`): given rows with known membership it
returns a function scoring other rows (higher = member) with hard decisions. :mod:`metrics` runs
every fit at both attacker strengths (realistic: fitted on defended shadow/reference outputs;
upper bound: cross-fitted on the target's own membership). Scores are log-likelihood-ratio-like
and computed in log space from the exact served float32 values: no CDF saturation, no clipping
that would tie distinct outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from veil.privacy.metrics import Fit, fixed_decision_fit, threshold_fit
from veil.python_backend.leakage import label_only_floor

TINY = np.finfo(np.float64).tiny  # log floor for exact zeros only (a float32 output of 0 is a real tie)


@dataclass
class Outputs:
    """Served outputs for a set of rows with their true labels; ``extra`` holds per-row features
    (reference-model phi for LiRA, query-attack aggregates), ``texts`` the rows' texts."""

    probabilities: np.ndarray  # [N, C], float32 as served (kept exactly)
    labels: np.ndarray  # [N]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        self.probabilities = np.asarray(self.probabilities, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.probabilities) != len(self.labels):  # one output per row: take() indexes both
            raise ValueError(f"{len(self.probabilities)} outputs for {len(self.labels)} rows")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Outputs:
        idx = np.asarray(idx)
        texts = [self.texts[i] for i in idx] if self.texts is not None else None
        return Outputs(self.probabilities[idx], self.labels[idx], {k: v[idx] for k, v in self.extra.items()}, texts)

    @property
    def p64(self) -> np.ndarray:
        return self.probabilities.astype(np.float64)  # exact: every float32 is a float64

    @property
    def correct(self) -> np.ndarray:
        return self.probabilities.argmax(1) == self.labels


def floor(o: Outputs, is_member: np.ndarray) -> float:
    """Single-query label-only floor 0.5 + (train acc - test acc) / 2 of these outputs."""
    return label_only_floor(o.correct[is_member], o.correct[~is_member])


# --- scores (log space) ----------------------------------------------------------------------------


def log_probs(o: Outputs) -> np.ndarray:
    return np.log(np.maximum(o.p64, TINY))


def phi(o: Outputs) -> np.ndarray:
    """LiRA's logit confidence log(p_y / (1 - p_y)), with 1 - p_y summed from the other entries
    (no cancellation near p_y = 1, no clipping)."""
    p = o.p64
    idx = np.arange(len(o))
    py = p[idx, o.labels]
    rest = np.where(np.eye(p.shape[1], dtype=bool)[o.labels], 0.0, p).sum(1)
    return np.log(np.maximum(py, TINY)) - np.log(np.maximum(rest, TINY))


def loss_score(o: Outputs) -> np.ndarray:
    """Log true-class probability (negative cross-entropy loss, Yeom et al. 2018)."""
    return log_probs(o)[np.arange(len(o)), o.labels]


def confidence_score(o: Outputs) -> np.ndarray:
    """Label-free: log of the top probability."""
    return log_probs(o).max(1)


def entropy_score(o: Outputs) -> np.ndarray:
    """Negative prediction entropy."""
    p = o.p64
    return (p * log_probs(o)).sum(1)


def modified_entropy_score(o: Outputs) -> np.ndarray:
    """Negative modified entropy (Song & Mittal 2021), log-space: log(1 - p) from the other entries."""
    p, lp = o.p64, log_probs(o)
    idx = np.arange(len(o))
    py = p[idx, o.labels]
    others = np.stack([np.delete(p, j, axis=1).sum(1) for j in range(p.shape[1])], 1)  # 1 - p_j, summed
    log1m = np.log(np.maximum(others, TINY))
    mentr = -(1 - py) * lp[idx, o.labels]
    other = -p * log1m
    other[idx, o.labels] = 0.0
    return -(mentr + other.sum(1))


def correct_score(o: Outputs) -> np.ndarray:
    return o.correct.astype(np.float64)


# --- LiRA, offline ---------------------------------------------------------------------------------


def _out_mean(ref: np.ndarray, empty: float) -> np.ndarray:
    """Each row's mean over its OUT references (the finite entries of ``ref`` [N, K]); a row with
    none gets the mean of every finite entry (``empty`` when there is none at all)."""
    have = np.isfinite(ref)
    fallback = np.nanmean(ref) if have.any() else empty
    counts = have.sum(1)
    return np.where(counts > 0, np.nansum(np.where(have, ref, 0.0), 1) / np.maximum(counts, 1), fallback)


def lira_score(o: Outputs) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022): -log P_out(phi' >= phi) under a Gaussian fitted to the
    row's OUT reference models (``extra['ref_phi']`` [N, K], NaN where a reference trained on the
    row). Per-row mean, global variance. logsf never saturates, so no ties are made."""
    ref = o.extra["ref_phi"]
    have = np.isfinite(ref)
    counts = have.sum(1)
    mu = _out_mean(ref, 0.0)
    dev = np.where(have, ref - mu[:, None], np.nan)
    sigma = float(np.nanstd(dev, ddof=1)) if (counts > 1).any() else 1.0
    sigma = max(sigma if np.isfinite(sigma) else 1.0, 1e-3)
    return -norm.logsf((phi(o) - mu) / sigma)


def label_lira_score(o: Outputs) -> np.ndarray:
    """Difficulty-calibrated correctness (Watson et al. 2022, on the 0-1 loss): a label-only attack
    with the attacker's own reference models. A row the target gets right that the row's OUT
    references find hard (low mean true-class probability; ``extra['ref_phi_raw']``: their raw
    outputs, which the attacker owns) is likelier a member; a row it gets wrong that they find easy
    likelier not. It reads the label alone, so every output that keeps the label reads the same:
    it is the label-only reference's strength against an attacker with reference models, which
    offline LiRA on a one-hot output (phi at the float limits, +-708) reads poorly."""
    p = _out_mean(expit(np.asarray(o.extra["ref_phi_raw"], np.float64)), 0.5)
    return np.where(o.correct, 1.0 - p, -p)


# --- learned attacks -------------------------------------------------------------------------------


def vector_features(o: Outputs) -> np.ndarray:
    """Sorted log-probabilities, true-class log-probability, correctness (Shokri-style)."""
    lp = log_probs(o)
    return np.column_stack([np.sort(lp, 1)[:, ::-1], loss_score(o), o.correct.astype(np.float64)])


def _float_bits(x: np.ndarray) -> np.ndarray:
    """Monotone integer image of float32 values (ulp steps between non-negative floats)."""
    return np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)


def float_features(o: Outputs, modes: dict[int, int]) -> np.ndarray:
    """Exact-value features: sorted log-probabilities (exact from float32), the top probability's
    float32 bit pattern and its ulp distance to the most common served top value of its predicted
    class (``modes``), the second value's bits, label and correctness."""
    p = o.probabilities
    top = p.max(1)
    second = np.sort(p, 1)[:, -2] if p.shape[1] > 1 else np.zeros(len(p), np.float32)
    pred = p.argmax(1)
    bits = _float_bits(top)
    ulp = np.array([b - modes.get(int(c), b) for b, c in zip(bits, pred, strict=True)], dtype=np.float64)
    return np.column_stack(
        [vector_features(o), bits.astype(np.float64), ulp, np.abs(ulp), _float_bits(second), o.labels, pred]
    )


def class_modes(o: Outputs) -> dict[int, int]:
    """Per predicted class, the most common served top value (as float32 bits)."""
    top_bits, pred = _float_bits(o.probabilities.max(1)), o.probabilities.argmax(1)
    out = {}
    for c in np.unique(pred):
        vals, counts = np.unique(top_bits[pred == c], return_counts=True)
        out[int(c)] = int(vals[np.argmax(counts)])
    return out


def learned_fit(features: Callable[[Outputs], np.ndarray], *, model: str = "hgb", seed: int = 0) -> Fit:
    """A classifier on per-row features; decisions at predicted probability 0.5."""

    def fit(rows: Outputs, member: np.ndarray):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = features(rows)
        if model == "hgb":
            # shallow and short: a few hundred rows per fit, hundreds of fits per run on 2 CPU cores
            clf = HistGradientBoostingClassifier(
                max_iter=60, max_depth=3, learning_rate=0.15, l2_regularization=1.0, random_state=seed
            )
        else:
            mlp = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=200, early_stopping=True, random_state=seed)
            clf = make_pipeline(StandardScaler(), mlp)
        # one thread: OpenMP spin-waiting on a shared 2-core machine makes small fits 10-100x slower
        with threadpool_limits(1):
            clf.fit(np.nan_to_num(x, posinf=1e300, neginf=-1e300), member)

        def apply(target: Outputs):
            with threadpool_limits(1):
                s = clf.predict_proba(np.nan_to_num(features(target), posinf=1e300, neginf=-1e300))[:, 1]
            # log-odds of the classifier's probability: the ROC ranks exactly as the probability does
            s = np.log(np.maximum(s, TINY)) - np.log(np.maximum(1 - s, TINY))
            return s, s >= 0

        return apply

    return fit


def float_fit(*, seed: int = 0) -> Fit:
    """The learned attack on exact float values; class modes come from the fitting rows."""

    def fit(rows: Outputs, member: np.ndarray):
        modes = class_modes(rows)
        return learned_fit(lambda o: float_features(o, modes), seed=seed)(rows, member)

    return fit


# --- blind baseline --------------------------------------------------------------------------------


def text_features(o: Outputs) -> np.ndarray:
    t = o.texts or []
    return np.array(
        [[len(s), len(s.split()), sum(not c.isalnum() and not c.isspace() for c in s), s.count(" ,")] for s in t],
        dtype=np.float64,
    ).reshape(len(t), 4)


# --- the suite -------------------------------------------------------------------------------------


def suite(*, lira: bool, blind: bool, seed: int = 0) -> dict[str, Fit]:
    """name -> fit for the single-query attacks."""
    attacks: dict[str, Fit] = {
        "gap": fixed_decision_fit(correct_score, 0.5),
        "loss": threshold_fit(loss_score),
        "confidence": threshold_fit(confidence_score),
        "classwise_loss": threshold_fit(loss_score, classwise=True),
        "classwise_entropy": threshold_fit(entropy_score, classwise=True),
        "classwise_modified_entropy": threshold_fit(modified_entropy_score, classwise=True),
        "neural": learned_fit(vector_features, model="mlp", seed=seed),
        "float_hgb": float_fit(seed=seed),
    }
    if lira:
        attacks["lira_offline"] = threshold_fit(lira_score)
        attacks["lira_label"] = threshold_fit(label_lira_score)
    if blind:
        attacks["blind"] = learned_fit(text_features, model="mlp", seed=seed)
    return attacks


NOT_SCORE_BASED = ("gap", "blind")
"""Excluded from "strongest attack": the gap attack is the floor, the blind attack a split check."""
