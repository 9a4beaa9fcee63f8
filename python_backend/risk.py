"""The risk evaluator: a small differentiable classifier r(z) = P(member | output) in [0, 1].

PGD works on the pre-sigmoid score s(z) = logit(r(z)), which does not saturate, so the
threshold tau is handled as ``score_tau = logit(tau)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from veil.python_backend.features import membership_features, num_features


class RiskEvaluator(nn.Module):
    """Standardised sharpness features -> monotone MLP + positive linear path + per-class bias.

    Weights into and out of the hidden layer and of the linear path pass through softplus, so the
    score increases when any feature gets sharper: lowering an output's confidence always lowers
    its risk, and for a binary task the risk level set is one point per predicted class.
    """

    def __init__(self, num_classes: int, *, hidden: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        f = num_features(num_classes)
        self.register_buffer("class_means", torch.full((num_classes, num_classes), 1.0 / num_classes))
        self.register_buffer("feature_mean", torch.zeros(f))
        self.register_buffer("feature_std", torch.ones(f))
        self.w1 = nn.Parameter(torch.randn(hidden, f) * 0.3 - 1.0)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.w2 = nn.Parameter(torch.randn(hidden) * 0.3 - 1.0)
        # A positive linear path beside the tanh units keeps the score strictly increasing where
        # the hidden units saturate, so no range of outputs sits on a flat "floor" of risk that
        # the defense could not tell apart (and would have to leave untouched).
        self.w_lin = nn.Parameter(torch.full((f,), -3.0))
        self.class_bias = nn.Parameter(torch.zeros(num_classes))

    def features(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, pred = membership_features(logits, self.class_means)
        return (x - self.feature_mean) / self.feature_std, pred

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid membership score, shape [B]."""
        x, pred = self.features(logits)
        h = torch.tanh(x @ F.softplus(self.w1).T + self.b1)
        return h @ F.softplus(self.w2) + x @ F.softplus(self.w_lin) + self.class_bias[pred]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Risk r(z) in [0, 1], shape [B]."""
        return torch.sigmoid(self.score(logits))


def logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))


@dataclass
class FitReport:
    train_auc: float
    holdout_auc: float
    """On held-out calibration rows that early stopping never saw (unbiased)."""
    epochs: int
    stopping_auc: float = float("nan")
    """The best AUC early stopping found on its own held-out rows (biased upwards: it chose it)."""


def class_means_from(logits: np.ndarray, num_classes: int) -> torch.Tensor:
    """Mean probability vector per predicted class (uniform where a class is never predicted)."""
    z = torch.as_tensor(logits, dtype=torch.float32)
    p = torch.softmax(z, dim=-1)
    pred = p.argmax(-1)
    means = torch.full((num_classes, num_classes), 1.0 / num_classes)
    for c in range(num_classes):
        sel = pred == c
        if sel.any():
            means[c] = p[sel].mean(0)
    return means


def fit_risk_evaluator(
    member_logits: np.ndarray,
    nonmember_logits: np.ndarray,
    *,
    hidden: int = 16,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
    holdout: float = 0.25,
    seed: int = 0,
) -> tuple[RiskEvaluator, FitReport]:
    """Fit on calibration outputs with class-balanced binary cross-entropy.

    A seeded ``holdout`` share of the calibration rows is kept out of the fit: one half picks the
    early-stopping epoch, the other half, which that choice never saw, gives the reported AUC.
    None of it comes from the attack evaluation sets.
    """
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(seed)
    z = np.concatenate([member_logits, nonmember_logits]).astype(np.float32)
    y = np.concatenate([np.ones(len(member_logits)), np.zeros(len(nonmember_logits))]).astype(np.float32)
    num_classes = z.shape[1]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(z))
    n_hold = int(len(z) * holdout)
    hold, test, train = order[: n_hold // 2], order[n_hold // 2 : n_hold], order[n_hold:]

    model = RiskEvaluator(num_classes, hidden=hidden)
    model.class_means.copy_(class_means_from(z[train], num_classes))
    zt = torch.from_numpy(z)
    with torch.no_grad():
        feats, _ = membership_features(zt, model.class_means)
        ftrain = feats[train]
        model.feature_mean.copy_(ftrain.mean(0))
        model.feature_std.copy_(ftrain.std(0).clamp_min(1e-3))
    yt = torch.from_numpy(y)
    pos = float(y[train].mean())
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-6))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best_state, best_auc, best_epoch = None, -1.0, 0
    for epoch in range(epochs):
        model.train()
        opt.zero_grad()
        loss = loss_fn(model.score(zt[train]), yt[train])
        loss.backward()
        opt.step()
        if len(hold) and (epoch % 5 == 4 or epoch == epochs - 1):
            with torch.no_grad():
                auc = roc_auc_score(y[hold], model.score(zt[hold]).numpy())
            if auc > best_auc + 1e-4:
                best_auc, best_epoch = auc, epoch + 1
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        train_auc = roc_auc_score(y[train], model.score(zt[train]).numpy())
        two_classes = len(np.unique(y[test])) == 2
        test_auc = float(roc_auc_score(y[test], model.score(zt[test]).numpy())) if two_classes else float("nan")
    stopping_auc = float(best_auc) if best_state is not None else float("nan")
    return model, FitReport(float(train_auc), test_auc, best_epoch or epochs, stopping_auc=stopping_auc)
