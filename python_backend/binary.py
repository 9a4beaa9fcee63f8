"""Two classes: PGD's answer in closed form.

With C = 2 every feature of :mod:`features` is a function of the margin m = z_top - z_other and
of the predicted class, and the risk evaluator is monotone in them, so the risk is s(m, c),
non-decreasing in m. The smallest label-preserving delta with s < target therefore moves both
logits by the same amount towards each other until the margin is just under the crossing
m*(c, target) where s(m*, c) = target. That crossing is found once per (class, target) by
bisection and cached; a request then costs a few numpy operations instead of PGD's forward and
backward passes. Results match :func:`pgd.label_preserving_pgd` up to one output-grid step (a
test checks it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from veil.backend.risk import RiskEvaluator

MAX_MARGIN = 80.0
TABLE_STEP = 0.01


class MarginSolver:
    def __init__(self, risk: RiskEvaluator, *, device: torch.device) -> None:
        if risk.num_classes != 2:
            raise ValueError("MarginSolver is for two classes")
        self.risk = risk
        self.device = device
        self.margins = np.arange(0.0, MAX_MARGIN + TABLE_STEP, TABLE_STEP)
        # Risk score along the margin for each predicted class: telemetry and crossing brackets.
        self.table = np.stack([self._score(self.margins, c) for c in (0, 1)])
        self._crossings: dict[tuple[int, float], float] = {}

    def _score(self, margins: np.ndarray, c: int) -> np.ndarray:
        z = np.zeros((len(margins), 2))
        z[:, c] = np.maximum(margins, 1e-9)  # a strictly positive lead keeps the predicted class c
        with torch.no_grad():
            return self.risk.score(torch.as_tensor(z, dtype=torch.float64, device=self.device)).cpu().numpy()

    def score(self, margins: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """s(m, c) by interpolation in the table (for telemetry; decisions use :meth:`crossing`)."""
        out = np.empty(len(margins))
        for c in (0, 1):
            sel = classes == c
            out[sel] = np.interp(margins[sel], self.margins, self.table[c])
        return out

    def crossing(self, c: int, target: float) -> float:
        """m* with s(m, c) <= target exactly for m <= m*: inf if never above, 0 if always above."""
        key = (int(c), round(float(target), 9))
        hit = self._crossings.get(key)
        if hit is not None:
            return hit
        row = self.table[c]
        above = np.flatnonzero(row > target)
        if len(above) == 0:
            value = math.inf if self._score(np.array([1e4]), c)[0] <= target else MAX_MARGIN
        elif above[0] == 0:
            value = 0.0
        else:
            lo, hi = self.margins[above[0] - 1], self.margins[above[0]]
            for _ in range(40):  # table brackets the crossing to TABLE_STEP; bisect to ~1e-14
                mid = 0.5 * (lo + hi)
                if self._score(np.array([mid]), c)[0] > target:
                    hi = mid
                else:
                    lo = mid
            value = float(lo)
        self._crossings[key] = value
        return value
