"""The level-set point in closed form: two classes exactly, more classes canonically.

With C = 2 every feature of :mod:`features` is a function of the margin m = z_top - z_other and
of the predicted class, and the risk evaluator is monotone in them, so the risk is s(m, c),
non-decreasing in m. The smallest label-preserving delta with s < target therefore moves both
logits by the same amount towards each other until the margin is just under the crossing
m*(c, target) where s(m*, c) = target. That crossing is found once per (class, target) by
bisection and cached; a request then costs a few numpy operations instead of PGD's forward and
backward passes. Results match :func:`pgd.label_preserving_pgd` up to one output-grid step (a
test checks it).

With C > 2 the level set r = tau is a surface, and where PGD lands on it still depends on the
input: on AG News the tail of PGD's outputs kept the class-wise loss attack 7 points above the
label-only floor. The canonical point of a class -- the label's logit m*(c, target) above a
uniform tail -- is the same for every input, so a caller learns the label and the level and
nothing else. The same solver finds it: for C = 2 the two constructions coincide.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from veil.python_backend.risk import RiskEvaluator

MAX_MARGIN = 80.0
TABLE_STEP = 0.01


class MarginSolver:
    def __init__(self, risk: RiskEvaluator, *, device: torch.device) -> None:
        if risk.num_classes < 2:
            raise ValueError("MarginSolver needs at least two classes")
        self.risk = risk
        self.num_classes = risk.num_classes
        self.device = device
        self.margins = np.arange(0.0, MAX_MARGIN + TABLE_STEP, TABLE_STEP)
        # Risk score along the margin for each predicted class: telemetry and crossing brackets.
        self.table = np.stack([self._score(self.margins, c) for c in range(self.num_classes)])
        self.rows = [list(map(float, row)) for row in self.table]
        self._crossings: dict[tuple[int, float], float] = {}

    def _score(self, margins: np.ndarray, c: int) -> np.ndarray:
        # A strictly positive lead keeps the predicted class c (at a tie argmax would pick class 0).
        return self._scores(margins, np.full(len(margins), c))

    def score(self, margins: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """s(m, c) by interpolation in the table (for telemetry; decisions use :meth:`crossing`)."""
        out = np.empty(len(margins))
        for c in range(self.num_classes):
            sel = classes == c
            out[sel] = np.interp(margins[sel], self.margins, self.table[c])
        beyond = margins > self.margins[-1]  # past the table the score keeps rising: compute it
        if beyond.any():
            out[beyond] = self._scores(margins[beyond], classes[beyond])
        return out

    def score_one(self, margin: float, c: int) -> float:
        """:meth:`score` for one row, without numpy's per-call overhead."""
        i = min(int(margin / TABLE_STEP), len(self.margins) - 2)
        row = self.rows[c]
        if margin > self.margins[-1]:
            return float(self._scores(np.array([margin]), np.array([c]))[0])
        frac = (margin - i * TABLE_STEP) / TABLE_STEP
        return row[i] + (row[i + 1] - row[i]) * frac

    def crossing(self, c: int, target: float) -> float:
        """m* with s(m, c) <= target exactly for m <= m*: inf if never above, 0 if always above."""
        key = (int(c), round(float(target), 9))
        hit = self._crossings.get(key)
        if hit is None:
            self.prepare([key])
            hit = self._crossings[key]
        return hit

    def prepare(self, pairs: list[tuple[int, float]]) -> None:
        """Solve many (class, target) crossings at once (one batched bisection), e.g. every
        quantised threat level at start-up, so no request pays for a cache miss."""
        keys = [(int(c), round(float(t), 9)) for c, t in pairs]
        keys = [k for k in dict.fromkeys(keys) if k not in self._crossings]
        if not keys:
            return
        classes = np.array([c for c, _ in keys])
        targets = np.array([t for _, t in keys])
        first_above = np.array([np.searchsorted(self.table[c], t, side="right") for c, t in keys])
        n = len(self.margins)
        lo = self.margins[np.clip(first_above - 1, 0, n - 1)].astype(np.float64)
        hi = self.margins[np.clip(first_above, 0, n - 1)].astype(np.float64)
        open_ = (first_above > 0) & (first_above < n)
        for _ in range(40):  # the table brackets each crossing to TABLE_STEP; bisect to ~1e-14
            mid = 0.5 * (lo + hi)
            above = self._scores(mid, classes) > targets
            hi = np.where(open_ & above, mid, hi)
            lo = np.where(open_ & ~above, mid, lo)
        for i, key in enumerate(keys):
            if first_above[i] == 0:
                value = 0.0
            elif first_above[i] >= n:
                value = math.inf if self._score(np.array([1e4]), key[0])[0] <= key[1] else MAX_MARGIN
            else:
                value = float(lo[i])
            self._crossings[key] = value

    def _scores(self, margins: np.ndarray, classes: np.ndarray) -> np.ndarray:
        z = np.zeros((len(margins), self.num_classes))
        z[np.arange(len(margins)), classes] = np.maximum(margins, 1e-9)
        with torch.no_grad():
            return self.risk.score(torch.as_tensor(z, dtype=torch.float64, device=self.device)).cpu().numpy()
