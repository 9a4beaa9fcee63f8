"""The risk evaluator on a small overfit model: a kernel classifier that memorises its members.

At a member the member's own kernel dominates (a sharp output); elsewhere neighbours mix (a
flatter one). That is the membership signal the risk evaluator must find in label-free features.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from veil.python_backend.calibrate import calibrate
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import MINHASH_SIZE, SIGNATURE_SIZE, common_values
from veil.python_backend.leakage import threshold_attack_suite


def overfit_model(seed: int = 0, classes: int = 3, dim: int = 8, n: int = 1200):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.8).astype(int) * (classes - 2)  # learnable, plus noise:
    flip = rng.random(n) < 0.2
    y[flip] = rng.integers(0, classes, flip.sum())
    members = np.arange(n) < n // 2
    xm, ym = x[members], y[members]

    def logits(q: np.ndarray) -> np.ndarray:
        d2 = ((q[:, None, :] - xm[None, :, :]) ** 2).sum(-1)
        w = np.exp(-d2 / 0.5)  # bandwidth small enough to memorise
        return np.log(np.stack([w[:, ym == c].sum(1) for c in range(classes)], 1) + 1e-3).astype(np.float32)

    return logits(x), y, members


def test_risk_evaluator_separates_members_and_defense_hides_them():
    z, y, members = overfit_model()
    calib = np.arange(len(z)) % 2 == 0  # calibration rows; the others are evaluation rows
    calib_sig = np.random.default_rng(1).integers(0, 3000, ((~members & calib).sum(), SIGNATURE_SIZE)).astype(np.int32)
    art = calibrate(
        member_logits=z[members & calib],
        member_labels=y[members & calib],
        nonmember_logits=z[~members & calib],
        nonmember_labels=y[~members & calib],
        classifier_sha256="0" * 64,
        label_names=["a", "b", "c"],
        calibration_signatures=calib_sig,
        progress=False,
    )
    # adaptive intensity's mask: the sketch values in at least 0.3% of the calibration non-members
    np.testing.assert_array_equal(art.tracker_mask(), common_values(calib_sig, min_share=0.003))
    assert 0 < len(art.tracker_common) < len(np.unique(calib_sig[:, MINHASH_SIZE:]))
    ev = ~calib
    out = Defense(art, config=DefenseConfig(variant="levelset"))(z[ev])
    assert art.metrics["risk_auc_holdout"] > 0.75
    assert roc_auc_score(members[ev], out.risk_before) > 0.75  # unseen evaluation rows
    raw = Defense(art, config=DefenseConfig(variant="none"))(z[ev]).probabilities
    raw_attack = max(threshold_attack_suite(raw, y[ev], members[ev]).values())
    defended_attack = max(threshold_attack_suite(out.probabilities, y[ev], members[ev]).values())
    assert defended_attack < raw_attack - 0.05


def test_reported_auc_comes_from_rows_early_stopping_never_saw():
    """Members are easy to tell apart on every row except the ones the reported AUC must use (the
    second half of the seeded holdout), where the logits are noise: early stopping's AUC is high,
    the reported one is not. Reporting the early-stopping rows' AUC would fail this."""
    from veil.python_backend.risk import fit_risk_evaluator

    rng = np.random.default_rng(0)
    n, seed = 800, 5
    y = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    z = np.where(y[:, None], [[4.0, -4.0]], [[1.0, -1.0]]) + rng.normal(scale=0.3, size=(n, 2))
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(n * 0.25)
    unseen = order[n_hold // 2 : n_hold]
    z[unseen] = rng.normal(size=(len(unseen), 2)) + np.array([2.5, -2.5])
    z = z.astype(np.float32)
    _, fit = fit_risk_evaluator(z[y], z[~y], epochs=100, holdout=0.25, seed=seed)
    assert fit.stopping_auc > 0.9
    assert fit.holdout_auc < 0.7
