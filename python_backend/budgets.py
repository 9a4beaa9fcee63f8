"""Per-dimension perturbation budgets eps_i from gradient importance.

A logit that carries the membership signal (large |d risk / d z_i|) gets a larger budget; the
two logits that decide the predicted label (the top class and the runner-up) get a smaller
share, so the perturbation prefers directions that lower confidence without eating into the
label's lead. Budgets are normalised to mean 1 per row and scaled by the row's intensity.
"""

from __future__ import annotations

import torch


def importance_budgets(
    risk_grad: torch.Tensor,
    logits: torch.Tensor,
    *,
    scale: torch.Tensor,
    floor: float = 0.25,
    label_weight: float = 0.5,
) -> torch.Tensor:
    """[B, C] budgets: ``scale[b] * w[b, i]`` with mean_i w[b, i] = 1.

    risk_grad: d score / d logits at the unperturbed point; scale: [B] intensity in logit units.
    floor keeps every dimension movable; label_weight < 1 shrinks the label-deciding dimensions.
    """
    a = risk_grad.abs()
    a = a / a.amax(1, keepdim=True).clamp_min(1e-12)
    w = floor + (1.0 - floor) * a
    top2 = logits.topk(2, dim=1).indices
    shrink = torch.ones_like(w).scatter_(1, top2, label_weight)
    w = w * shrink
    w = w / w.mean(1, keepdim=True)
    return w * scale[:, None]
