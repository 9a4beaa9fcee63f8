"""Artifacts for unit tests: a risk evaluator fitted on synthetic logits where members are sharper."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.calibrate import CalibrationConfig, calibrate_selective
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import SIGNATURE_SIZE
from veil.python_backend.risk import fit_risk_evaluator


def synthetic_logits(n: int, num_classes: int, *, sharp: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, (n, num_classes)).astype(np.float32)
    z[np.arange(n), rng.integers(0, num_classes, n)] += rng.gamma(2.0, sharp / 2.0, n).astype(np.float32)
    return z


@lru_cache(maxsize=32)
def make_artifact(num_classes: int, *, tau_quantile: float = 0.5, eps: float = 50.0) -> DefenseArtifact:
    members = synthetic_logits(300, num_classes, sharp=6.0, seed=num_classes)
    nonmembers = synthetic_logits(300, num_classes, sharp=3.0, seed=100 + num_classes)
    risk, _ = fit_risk_evaluator(members, nonmembers, epochs=150, seed=0)
    art = DefenseArtifact(
        num_classes=num_classes,
        classifier_sha256="0" * 64,
        tau=[0.5] * num_classes,
        eps=eps,
        target_shift=[0.3] * num_classes,
        temperature=2.0,
        noise_norm=1.0,
        hidden=16,
        label_names=[str(i) for i in range(num_classes)],
        risk_state={k: v.detach().clone() for k, v in risk.state_dict().items()},
    )
    out = Defense(art, config=DefenseConfig(variant="levelset"))(np.concatenate([members, nonmembers]))
    tau = [float(np.quantile(out.risk_before[out.labels == c], tau_quantile)) for c in range(num_classes)]
    # The selective defense: members' true labels are their sharp class, non-members' mostly so.
    y_m, y_n = members.argmax(1), synthetic_labels(nonmembers, seed=num_classes)
    tables = calibrate_selective(
        member_logits=members,
        member_labels=y_m,
        nonmember_logits=nonmembers,
        nonmember_labels=y_n,
        config=CalibrationConfig(seed=0),
    )
    return replace(
        art,
        tau=tau,
        selective=tables,
        index_signatures=member_signatures(len(members)),
        index_labels=y_m,
    )


def synthetic_labels(logits: np.ndarray, *, seed: int, wrong: float = 0.2) -> np.ndarray:
    """The argmax, except a share ``wrong`` of rows labelled as another class."""
    rng = np.random.default_rng(seed)
    y = logits.argmax(1)
    flip = rng.random(len(y)) < wrong
    y[flip] = (y[flip] + rng.integers(1, logits.shape[1], flip.sum())) % logits.shape[1]
    return y


def member_signatures(n: int, *, seed: int = 7) -> np.ndarray:
    """Distinct random MinHash-like signatures standing for n training texts."""
    return np.random.default_rng(seed).integers(0, 2**31 - 1, (n, SIGNATURE_SIZE), dtype=np.int64).astype(np.int32)
