"""Label-preserving projected gradient descent on the risk score, vectorised over the batch.

Each step linearises the risk score s at the current point and takes the Newton step onto the
target level set (the Lagrangian's stationary point for the linearised constraint, as in
DeepFool / fast-minimum-norm attacks), then projects: |delta_i| <= eps_i and the predicted label
stays ahead by a margin. Because the features are near-linear in the logit margin this lands in
one to three steps. A forward-only bisection then pulls every converged row back onto the level
set, so perturbed outputs of one class collapse onto (nearly) one point instead of keeping a trace
of how far they started.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PGDConfig:
    max_steps: int = 8
    label_margin: float = 0.05
    """Logit gap kept between the predicted class and every other class (capped by the original gap)."""
    overshoot: float = 0.05
    """Newton steps aim this far (score units) past the target, so rounding cannot leave a row just above."""
    max_step_norm: float = 10.0
    """Trust region per step, in logit units, against wild steps where the score is flat."""
    refine_steps: int = 12
    """Most forward passes (regula falsi along the last step) that pull converged rows back onto
    the level set; rows stop once within ``refine_tolerance`` below the target."""
    refine_tolerance: float = 2e-3
    tolerance: float = 1e-3
    """For ``mode="onto"``: |s - target| below this counts as converged."""


@dataclass
class PGDResult:
    delta: torch.Tensor  # [B, C]
    score: torch.Tensor  # [B] score at z + delta
    steps: torch.Tensor  # [B] int, gradient steps taken
    converged: torch.Tensor  # [B] bool


def project(
    z: torch.Tensor,
    delta: torch.Tensor,
    *,
    label: torch.Tensor,
    eps: torch.Tensor,
    margin: torch.Tensor,
    never_sharpen: bool = False,
) -> torch.Tensor:
    """Clip to the box |delta| <= eps, then keep ``label`` ahead of every class by ``margin``.

    With ``never_sharpen`` no class may fall further behind the label than it was (so the top
    probability can only go down): the defense never makes an output more confident.
    Competitors that come too close are lowered as far as their own box allows; if that is not
    enough the label's logit is raised. The label constraint wins over the box, so the returned
    point always keeps the label (the box can only give way for near-ties).
    """
    delta = torch.maximum(torch.minimum(delta, eps), -eps)
    others = torch.ones_like(z, dtype=torch.bool).scatter_(1, label[:, None], False)
    if never_sharpen:  # the label's logit only goes down (raising it = lowering all the others)
        delta = torch.where(others, delta, delta.clamp_max(0.0))
    x = z + delta
    top = x.gather(1, label[:, None])
    if never_sharpen:
        floor = top + (z - z.gather(1, label[:, None]))  # original gaps
        x = torch.where(others & (x < floor), floor, x)
    ceiling = top - margin[:, None]
    lowered = torch.maximum(ceiling, z - eps)
    x = torch.where(others & (x > ceiling), lowered, x)
    needed = torch.where(others, x, torch.full_like(x, float("-inf"))).amax(1, keepdim=True) + margin[:, None]
    x = x.scatter(1, label[:, None], torch.maximum(top, needed))
    return x - z


def label_margin(z: torch.Tensor, label: torch.Tensor, cap: float) -> torch.Tensor:
    """min(cap, original gap to the runner-up): never forces a near-tie output to be sharper."""
    top = z.gather(1, label[:, None]).squeeze(1)
    others = z.scatter(1, label[:, None], float("-inf"))
    gap = top - others.max(1).values
    return gap.clamp(min=0.0, max=cap)


def _score_and_grad(score_fn: ScoreFn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        s = score_fn(x)
        (g,) = torch.autograd.grad(s.sum(), x)
    return s.detach(), g


def label_preserving_pgd(
    z: torch.Tensor,
    *,
    score_fn: ScoreFn,
    target: torch.Tensor,
    eps: torch.Tensor,
    config: PGDConfig = PGDConfig(),
    mode: Literal["below", "onto"] = "below",
) -> PGDResult:
    """Find small delta per row with score(z + delta) < target ("below") or = target ("onto").

    z: [B, C] logits; target: [B] score thresholds; eps: [B, C] per-dimension budgets.
    Rows already satisfying the goal are returned with delta = 0 and steps = 0.
    If a row runs out of steps, the lowest-score (for "onto": closest) label-preserving iterate
    is returned with converged = False.
    """
    z = z.detach()
    label = z.argmax(1)
    margin = label_margin(z, label, config.label_margin)
    not_label = torch.ones_like(z, dtype=torch.bool).scatter_(1, label[:, None], False)
    delta = torch.zeros_like(z)
    steps = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)

    def goal_met(s: torch.Tensor) -> torch.Tensor:
        if mode == "below":
            return s < target
        return (s - target).abs() <= config.tolerance

    def badness(s: torch.Tensor) -> torch.Tensor:
        return s - target if mode == "below" else (s - target).abs()

    s, g = _score_and_grad(score_fn, z)
    done = goal_met(s)
    best_delta, best_bad = delta.clone(), badness(s)
    last_infeasible = delta.clone()  # a point with s >= target, for the bisection
    aim = target - config.overshoot if mode == "below" else target

    for _ in range(config.max_steps):
        active = ~done
        if not bool(active.any()):
            break
        # Zero the gradient where the box is already tight in the direction the step would push.
        direction = -g * torch.sign(s - aim)[:, None]
        at_upper = (delta >= eps - 1e-6) & (direction > 0)
        at_lower = (delta <= -eps + 1e-6) & (direction < 0)
        blocked = at_upper | at_lower
        if mode == "below":  # competitors already at their original gap cannot drop further
            x = z + delta
            gap_now = x - x.gather(1, label[:, None])
            gap_then = z - z.gather(1, label[:, None])
            blocked |= not_label & (gap_now <= gap_then + 1e-6) & (direction < 0)
        d = torch.where(blocked, torch.zeros_like(g), g)
        norm2 = (d * d).sum(1).clamp_min(1e-12)
        step = -((s - aim) / norm2)[:, None] * d
        step_norm = step.norm(dim=1, keepdim=True)
        step = step * torch.clamp(config.max_step_norm / step_norm.clamp_min(1e-12), max=1.0)
        new_delta = project(z, delta + step, label=label, eps=eps, margin=margin, never_sharpen=mode == "below")
        last_infeasible = torch.where(active[:, None], delta, last_infeasible)
        delta = torch.where(active[:, None], new_delta, delta)
        steps = steps + active.long()
        s_new, g_new = _score_and_grad(score_fn, z + delta)
        s = torch.where(active, s_new, s)
        g = torch.where(active[:, None], g_new, g)
        bad = badness(s)
        better = active & (bad < best_bad)
        best_delta = torch.where(better[:, None], delta, best_delta)
        best_bad = torch.where(better, bad, best_bad)
        done = done | goal_met(s)

    converged = goal_met(s)
    delta = torch.where(converged[:, None], delta, best_delta)

    if mode == "below" and config.refine_steps > 0:
        moved = converged & (steps > 0)
        if bool(moved.any()):
            delta = _refine(z, last_infeasible, delta, moved, score_fn=score_fn, target=target, config=config)

    with torch.no_grad():
        s = score_fn(z + delta)
    return PGDResult(delta=delta, score=s, steps=steps, converged=goal_met(s))


def _refine(
    z: torch.Tensor,
    outside: torch.Tensor,
    inside: torch.Tensor,
    rows: torch.Tensor,
    *,
    score_fn: ScoreFn,
    target: torch.Tensor,
    config: PGDConfig,
) -> torch.Tensor:
    """Move ``rows`` along the segment [outside, inside] to just below the target score.

    The segment lies inside the convex box-and-label set, so every point on it is feasible, and
    the risk is monotone along it. Anderson-Bjorck regula falsi (forward passes only) keeps a
    bracket and converges superlinearly; the returned point always has s < target.
    """
    direction = inside - outside
    with torch.no_grad():
        f_lo = score_fn(z + outside) - target  # >= 0 at lo
        f_hi = score_fn(z + inside) - target  # < 0 at hi
        lo = torch.zeros_like(f_lo)
        hi = torch.ones_like(f_lo)
        side = torch.zeros_like(f_lo)
        active = rows & (f_hi < -config.refine_tolerance)
        for _ in range(config.refine_steps):
            if not bool(active.any()):
                break
            t = hi - f_hi * (hi - lo) / (f_hi - f_lo).clamp_max(-1e-12)
            t = torch.minimum(torch.maximum(t, lo + 1e-3 * (hi - lo)), hi - 1e-3 * (hi - lo))
            f = score_fn(z + outside + t[:, None] * direction) - target
            below = active & (f < 0)
            above = active & ~(f < 0)
            # Anderson-Bjorck: when the same end survives twice, scale its value down so the
            # next secant moves towards it (plain regula falsi stalls on curved functions).
            m_lo = 1.0 - f / f_hi.clamp_max(-1e-12)
            m_hi = 1.0 - f / f_lo.clamp_min(1e-12)
            f_lo = torch.where(below & (side > 0), f_lo * torch.where(m_lo > 0, m_lo, 0.5), f_lo)
            f_hi = torch.where(above & (side < 0), f_hi * torch.where(m_hi > 0, m_hi, 0.5), f_hi)
            lo, f_lo = torch.where(above, t, lo), torch.where(above, f, f_lo)
            hi, f_hi = torch.where(below, t, hi), torch.where(below, f, f_hi)
            side = torch.where(below, torch.ones_like(side), torch.where(above, -torch.ones_like(side), side))
            active = active & (f_hi < -config.refine_tolerance)
    return torch.where(rows[:, None], outside + hi[:, None] * direction, inside)
