"""The output-risk defenses: the paper's level set (closed form or iterative PGD) and its ablations.

A risk evaluator scores each output; rows with r(z) > tau are moved by the smallest
label-preserving delta with r(z + delta) < tau. For two classes the crossing is solved in closed
form (:mod:`levelset`); for more classes the class's canonical level-set point is served; the
``pgd`` variant iterates :func:`pgd.label_preserving_pgd` as published. ``memguard`` moves every
row onto r = 0.5; ``random_noise`` adds deterministic noise of the level-set move's mean size.

Everything is computed in float64 from max-subtracted logits and cast to float32 once, so a
served vector depends on the decision and the raw vector, not on the logits' common offset, and
the label survives logits up to float32's largest values.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.budgets import importance_budgets
from veil.python_backend.levelset import MAX_MARGIN, MarginSolver
from veil.python_backend.pgd import label_margin, label_preserving_pgd, project
from veil.python_backend.probabilities import softmax, softmax64
from veil.python_backend.result import DefenseConfig, DefenseResult
from veil.python_backend.risk import logit

ONTO = ("memguard",)  # every row moved onto the level set, from either side


def _row_seeds(z: np.ndarray) -> np.ndarray:
    return np.array(
        [int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8).digest(), "little") for row in z],
        dtype=np.uint64,
    )


class LevelSetDefense:
    """Holds the risk evaluator on a device and applies one output-risk variant to batches of logits."""

    def __init__(
        self,
        artifact: DefenseArtifact,
        *,
        config: DefenseConfig = DefenseConfig(),
        device: str | torch.device = "cpu",
    ) -> None:
        self.artifact = artifact
        self.config = config
        self.device = torch.device(device)
        # float64: per-row results must not depend on which rows share the batch (BLAS blocking
        # differs with batch size; in float32 that can flip a threshold decision).
        self.risk = artifact.risk_evaluator(self.device).double()
        for p in self.risk.parameters():
            p.requires_grad_(False)
        self.score_tau = np.array([logit(t) for t in artifact.tau])  # per predicted class
        self.target_shift = np.asarray(artifact.target_shift, dtype=np.float64)
        self.num_classes = artifact.num_classes
        self.margins = None
        self.spec = config.spec
        closed = config.closed_form_binary if self.num_classes == 2 else config.canonical_multiclass
        if closed and self.spec.method == "levelset":
            self.margins = MarginSolver(self.risk, device=self.device)
            levels = np.arange(101) / 100 if self.adaptive else np.zeros(1)  # threat is quantised to 1/100
            memguard = config.variant == "memguard"
            self.margins.prepare(
                [
                    (c, 0.0 if memguard else float(self.score_tau[c] - self.target_shift[c] * q))
                    for c in range(self.num_classes)
                    for q in levels
                ]
            )

    @property
    def adaptive(self) -> bool:
        return self.spec.adaptive

    def _scores(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.risk.score(z)

    def __call__(
        self,
        logits: np.ndarray,
        *,
        threat: np.ndarray | None = None,
        eps_scale: float | None = None,
    ) -> DefenseResult:
        """Defend a checked [B, C] batch. ``threat`` [B] in [0, 1] is used by adaptive variants only."""
        # Max-subtracted in float64: the served values then do not depend on a common offset, and
        # huge logits (up to float32's largest) keep their margins (float32 sums would lose them).
        logits = np.asarray(logits, dtype=np.float32)
        labels = logits.argmax(1).astype(np.int64)
        shifted = logits.astype(np.float64) - logits.astype(np.float64).max(1, keepdims=True)
        b = logits.shape[0]
        if b == 1 and self.margins is not None and self.num_classes == 2:
            return self._closed_form_one(
                logits, shifted, 0.0 if threat is None else float(np.asarray(threat).reshape(-1)[0])
            )
        result = DefenseResult.untouched(softmax(logits), labels)
        variant = self.config.variant
        if b == 0:
            return result

        # Threat is quantised to 1/100 so that targets (and the closed-form cache) are discrete.
        threat_q = np.round(np.clip(threat, 0.0, 1.0) * 100) / 100 if self.adaptive and threat is not None else None
        target_np = self.score_tau[result.labels]
        mult_np = np.ones(b)
        if threat_q is not None:
            target_np = target_np - self.target_shift[result.labels] * threat_q
            mult_np = 1.0 + threat_q  # intensity 1 at threat 0, 2 at threat 1
        if variant == "memguard":
            target_np = np.zeros(b)
        eps_base = self.artifact.eps if eps_scale is None else eps_scale
        if self.margins is not None:
            solve = self._closed_form if self.num_classes == 2 else self._canonical
            return solve(shifted, result, target_np, eps_base * mult_np, onto=variant in ONTO)

        z = torch.from_numpy(shifted).to(self.device, torch.float64)
        s = self._scores(z)
        risk_before = torch.sigmoid(s).cpu().numpy().astype(np.float64)
        result.risk_before, result.risk_after = risk_before, risk_before.copy()
        target = torch.as_tensor(target_np, dtype=torch.float64, device=self.device)
        mult = torch.as_tensor(mult_np, dtype=torch.float64, device=self.device)

        if variant in ONTO:
            rows = torch.arange(b, device=self.device)
            mode = "onto"
        else:
            rows = torch.nonzero(s > target).squeeze(1)
            mode = "below"
        if rows.numel() == 0:
            return result

        zr = z[rows]
        with torch.enable_grad():
            x = zr.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.risk.score(x).sum(), x)
        eps = importance_budgets(
            g,
            zr,
            scale=eps_base * mult[rows],
            floor=self.config.budget_floor,
            label_weight=self.config.label_weight,
        )
        if variant == "random_noise":
            seeds = _row_seeds(logits[rows.cpu().numpy()])
            noise = np.stack([np.random.default_rng(int(sd)).standard_normal(self.num_classes) for sd in seeds])
            n = torch.as_tensor(noise, dtype=torch.float64, device=self.device)
            n = n - n.mean(1, keepdim=True)  # softmax ignores the common shift
            n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-12) * self.artifact.noise_norm
            label = zr.argmax(1)
            delta = project(zr, n, label=label, eps=eps, margin=label_margin(zr, label, self.config.pgd.label_margin))
            steps = torch.zeros(len(rows), dtype=torch.long, device=self.device)
            converged = torch.ones(len(rows), dtype=torch.bool, device=self.device)
        else:
            res = label_preserving_pgd(
                zr, score_fn=self.risk.score, target=target[rows], eps=eps, config=self.config.pgd, mode=mode
            )
            delta, steps, converged = res.delta, res.steps, res.converged
            if self.config.grid > 0:
                delta = self._snap(zr, delta, target[rows], converged, mode)

        served = zr + delta
        idx = rows.cpu().numpy()
        probs = result.probabilities.copy()
        probs[idx] = softmax64(served.cpu().numpy())
        result.probabilities = probs
        result.perturbed[idx] = True
        result.steps[idx] = steps.cpu().numpy()
        result.exhausted[idx] = ~converged.cpu().numpy()
        result.delta[idx] = (served - zr).cpu().numpy()
        result.budget_use[idx] = (delta.abs() / eps.clamp_min(1e-12)).amax(1).cpu().numpy()
        result.risk_after[idx] = torch.sigmoid(self._scores(served)).cpu().numpy()
        return result

    def _closed_form(
        self, logits: np.ndarray, result: DefenseResult, target: np.ndarray, eps: np.ndarray, *, onto: bool
    ) -> DefenseResult:
        """Two classes (see :mod:`binary`): move the margin to just under the risk crossing."""
        z = logits.astype(np.float64)
        label = result.labels
        margin = np.abs(z[:, 0] - z[:, 1])
        crossing = np.empty(len(z))
        for c, t in set(zip(label.tolist(), target.tolist(), strict=True)):
            crossing[(label == c) & (target == t)] = self.margins.crossing(c, t)
        result.risk_before = 1.0 / (1.0 + np.exp(-self.margins.score(margin, label)))
        moved = np.ones(len(z), bool) if onto else margin > crossing
        if not moved.any():
            result.risk_after = result.risk_before.copy()
            return result
        grid = self.config.grid or 1e-6
        goal = np.floor(np.nextafter(crossing, -np.inf) / grid) * grid  # largest grid margin below it
        least = np.minimum(self.config.pgd.label_margin, margin)  # the label keeps this lead
        exhausted = goal < least
        goal = np.maximum(goal, least)
        new = np.clip(goal, margin - 2 * eps, margin + 2 * eps if onto else np.inf)  # each logit moves <= eps
        exhausted |= new != goal
        new = np.where(moved, np.where(np.isfinite(new), new, margin), margin)
        shift = (margin - new) / 2  # the label's logit down, the other up, by the same amount
        sign = np.where(label == 0, 1.0, -1.0)
        delta = np.stack([-sign * shift, sign * shift], 1)
        # Served from the decision alone (label, new margin): no trace of the raw logits' offset.
        served = np.zeros_like(z)
        served[np.arange(len(z)), label] = new
        result.probabilities = np.where(moved[:, None], softmax64(served), result.probabilities)
        result.perturbed = moved & (shift != 0) | (moved & onto)
        result.steps = result.perturbed.astype(np.int64)
        result.exhausted = result.perturbed & exhausted
        result.delta = np.where(result.perturbed[:, None], delta, 0.0).astype(np.float32)
        result.budget_use = np.where(result.perturbed, np.abs(shift) / eps, 0.0)
        result.risk_after = np.where(
            result.perturbed, 1.0 / (1.0 + np.exp(-self.margins.score(new, label))), result.risk_before
        )
        return result

    def _canonical(
        self, logits: np.ndarray, result: DefenseResult, target: np.ndarray, eps: np.ndarray, *, onto: bool
    ) -> DefenseResult:
        """More than two classes (see :mod:`binary`): serve the class's canonical level-set point,
        the label's logit at the largest grid value under the crossing above a uniform tail.

        Rows at full budget get exactly softmax(canonical point), so they are bit-identical for
        every input with the same class and target; a row whose move would exceed its budget
        (max_i |delta_i| <= eps, after the free common shift) moves as far as the budget allows
        along the straight line, which keeps the label, and is counted as exhausted."""
        z = logits.astype(np.float64)
        label = result.labels
        b = len(z)
        with torch.no_grad():
            s = self.risk.score(torch.as_tensor(z, device=self.device)).cpu().numpy()
        result.risk_before = 1.0 / (1.0 + np.exp(-s))
        result.risk_after = result.risk_before.copy()
        crossing = np.empty(b)
        for c, t in set(zip(label.tolist(), target.tolist(), strict=True)):
            crossing[(label == c) & (target == t)] = self.margins.crossing(c, t)
        moved = np.ones(b, bool) if onto else s > target
        if not moved.any():
            return result
        grid = self.config.grid or 1e-6
        goal = np.floor(np.nextafter(crossing, -np.inf) / grid) * grid
        least = self.config.pgd.label_margin
        exhausted = goal < least
        # No crossing: the whole canonical line is below the target; its sharp end is one-hot-like.
        goal = np.where(np.isfinite(goal), np.maximum(goal, least), MAX_MARGIN)
        canon = np.zeros_like(z)
        canon[np.arange(b), label] = goal
        diff = canon - z
        diff -= ((diff.max(1) + diff.min(1)) / 2)[:, None]  # the common shift that needs least budget
        need = np.abs(diff).max(1)
        t = np.minimum(1.0, eps / np.maximum(need, 1e-12))
        short = t < 1.0
        exhausted |= short
        served = z + t[:, None] * diff
        probs = softmax64(canon)
        if short.any():  # only budget-limited rows need their own softmax
            probs[short] = softmax64(served[short])
        idx = np.flatnonzero(moved)
        result.probabilities = result.probabilities.copy()
        result.probabilities[idx] = probs[idx]
        result.perturbed = moved
        result.steps = moved.astype(np.int64)
        result.exhausted = moved & exhausted
        result.delta = np.where(moved[:, None], served - z, 0.0).astype(np.float32)
        result.budget_use = np.where(moved, need * t / eps, 0.0)
        # The canonical point's score is in the solver's table (goal sits on its grid); only
        # budget-limited rows need a second forward pass.
        after = self.margins.score(goal, label)
        redo = np.flatnonzero(moved & short)
        if len(redo):
            with torch.no_grad():
                x = torch.as_tensor(served[redo].astype(np.float64), device=self.device)
                after[redo] = self.risk.score(x).cpu().numpy()
        result.risk_after[idx] = 1.0 / (1.0 + np.exp(-after[idx]))
        return result

    def _closed_form_one(self, logits: np.ndarray, z: np.ndarray, threat: float) -> DefenseResult:
        """:meth:`_closed_form` for a single row in plain Python floats: at batch size 1 (the
        latency-bound case) numpy's per-call overhead would be most of the defense's cost.
        The arithmetic is the same, step for step (a test checks that both agree bit for bit)."""
        z0, z1 = float(z[0, 0]), float(z[0, 1])  # max-subtracted float64
        label = int(z1 > z0)  # argmax; a tie goes to class 0
        raw = softmax(logits)  # untouched rows: bit-identical to the raw endpoint
        margin = abs(z0 - z1)
        target = float(self.score_tau[label])
        mult = 1.0
        if self.adaptive:
            q = round(min(max(threat, 0.0), 1.0) * 100) / 100
            target -= float(self.target_shift[label]) * q
            mult = 1.0 + q
        onto = self.config.variant in ONTO
        if self.config.variant == "memguard":
            target = 0.0
        eps = self.artifact.eps * mult
        crossing = self.margins.crossing(label, target)
        risk_before = 1.0 / (1.0 + math.exp(-self.margins.score_one(margin, label)))
        result = DefenseResult(
            probabilities=raw,
            labels=np.array([label], np.int64),
            perturbed=np.zeros(1, bool),
            steps=np.zeros(1, np.int64),
            exhausted=np.zeros(1, bool),
            risk_before=np.array([risk_before]),
            risk_after=np.array([risk_before]),
            delta=np.zeros((1, 2), np.float32),
            budget_use=np.zeros(1),
        )
        if not (onto or margin > crossing):
            return result
        grid = self.config.grid or 1e-6
        goal = math.floor(np.nextafter(crossing, -np.inf) / grid) * grid
        least = min(self.config.pgd.label_margin, margin)
        exhausted = goal < least
        goal = max(goal, least)
        new = min(max(goal, margin - 2 * eps), margin + 2 * eps if onto else math.inf)
        exhausted = exhausted or new != goal
        if not math.isfinite(new):
            new = margin
        shift = (margin - new) / 2
        if shift == 0 and not onto:
            return result
        sign = 1.0 if label == 0 else -1.0
        served = np.array([[new, 0.0] if label == 0 else [0.0, new]])
        result.probabilities = softmax64(served)
        result.perturbed[0] = True
        result.steps[0] = 1
        result.exhausted[0] = exhausted
        result.delta = np.array([[-sign * shift, sign * shift]], np.float32)
        result.budget_use[0] = abs(shift) / eps
        result.risk_after[0] = 1.0 / (1.0 + math.exp(-self.margins.score_one(new, label)))
        return result

    def _snap(
        self, z: torch.Tensor, delta: torch.Tensor, target: torch.Tensor, converged: torch.Tensor, mode: str
    ) -> torch.Tensor:
        """Snap gaps to the label's logit up to the grid (less confident); keep where still valid."""
        grid = self.config.grid
        x = z + delta
        label = z.argmax(1)
        top = x.gather(1, label[:, None])
        gaps = torch.ceil((x - top) / grid) * grid
        margin = label_margin(z, label, self.config.pgd.label_margin)
        others = torch.ones_like(x, dtype=torch.bool).scatter_(1, label[:, None], False)
        gaps = torch.where(others, torch.minimum(gaps, -margin[:, None]), torch.zeros_like(gaps))
        snapped = top + gaps - z
        if mode != "below":
            return snapped
        ok = self._scores(z + snapped) < target
        keep = converged & ok | ~converged
        return torch.where(keep[:, None], snapped, delta)
