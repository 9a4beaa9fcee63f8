"""Label-free membership features of a classifier output, differentiable in the logits.

The paper also uses prediction correctness, which needs the true label; a server never has it,
so every feature here is a function of the logits alone. Each feature is oriented so that larger
means *sharper* (more member-like, the paper's premise), which lets the risk evaluator be
monotone in sharpness by construction. They are in log space (log-odds, log-entropy, sorted
log-probabilities) so they stay roughly linear in the logit margin: the risk score's gradient
stays informative for confident outputs and PGD converges in a step or two.
"""

from __future__ import annotations

import torch


def num_features(num_classes: int) -> int:
    return num_classes + 4


def feature_names(num_classes: int) -> list[str]:
    return [
        "top_logprob",
        *[f"neg_sorted_logprob_{i}" for i in range(1, num_classes)],
        "confidence_logodds",
        "top2_margin",
        "neg_log_entropy",
        "class_mean_deviation",
    ]


def membership_features(logits: torch.Tensor, class_means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C] logits -> ([B, C + 4] sharpness features, [B] predicted class).

    ``class_means[c]`` is the mean probability vector of calibration outputs predicted as ``c``;
    ``class_mean_deviation`` = log p_top - log mean_top: the paper's "deviation from the
    class-mean output", signed so that sharper than usual is positive.
    """
    lp = torch.log_softmax(logits, dim=-1)
    p = lp.exp()
    lps, order = torch.sort(lp, dim=-1, descending=True)
    top = lps[:, 0]
    rest = torch.logsumexp(lps[:, 1:], dim=-1)
    entropy = -(p * lp).sum(-1)
    pred = order[:, 0]
    mean_top = class_means[pred].gather(1, pred[:, None]).squeeze(1).clamp_min(1e-12)
    scalars = torch.stack(
        [top - rest, lps[:, 0] - lps[:, 1], -torch.log(entropy + 1e-30), top - torch.log(mean_top)], dim=1
    )
    return torch.cat([top[:, None], -lps[:, 1:], scalars], dim=1), pred
