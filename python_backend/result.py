"""What the defense step is configured with and what it returns (shared by every method)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from veil.python_backend import variants
from veil.python_backend.pgd import PGDConfig


@dataclass(frozen=True)
class DefenseConfig:
    variant: str = "veil"
    pgd: PGDConfig = field(default_factory=PGDConfig)
    budget_floor: float = 0.25
    label_weight: float = 0.5
    grid: float = 0.01
    """Level-set methods: perturbed outputs' logit gaps are snapped (towards lower confidence) to
    this grid, so rows brought to the same level set give identical outputs. 0 disables."""
    closed_form_binary: bool = True
    """Level-set method, two classes: :mod:`levelset`'s exact solution instead of iterating PGD."""
    canonical_multiclass: bool = True
    """Level-set method, more than two classes: the canonical level-set point (:mod:`levelset`)
    instead of PGD's minimal-delta point."""
    intensity: float | None = None
    """Selective method: a fixed threat level for every row (the knob); None = the artifact's
    calibrated floor (plus the caller's threat for adaptive variants)."""

    def __post_init__(self) -> None:
        variants.get(self.variant)  # raises ValueError naming the known variants

    @property
    def spec(self) -> variants.Variant:
        return variants.get(self.variant)


@dataclass
class DefenseResult:
    probabilities: np.ndarray  # [B, C] float32
    labels: np.ndarray  # [B] int64, the raw argmax (first on ties): never changed
    perturbed: np.ndarray  # [B] bool
    steps: np.ndarray  # [B] int, gradient steps (0 for untouched rows)
    exhausted: np.ndarray  # [B] bool, PGD stopped without reaching the target
    risk_before: np.ndarray  # [B] level set: risk r(z); selective: membership weight m
    risk_after: np.ndarray  # [B]
    delta: np.ndarray  # [B, C] logit perturbation (selective: the label's score change)
    budget_use: np.ndarray  # [B] max_i |delta_i| / eps_i (0 for untouched rows)

    @property
    def delta_abs(self) -> np.ndarray:
        """[B] mean |delta_i| in logit units."""
        return np.abs(self.delta).mean(1)

    @property
    def delta_max(self) -> np.ndarray:
        return np.abs(self.delta).max(1) if self.delta.size else np.zeros(len(self.delta))

    @classmethod
    def untouched(cls, probabilities: np.ndarray, labels: np.ndarray) -> DefenseResult:
        b, c = probabilities.shape
        zeros = np.zeros(b)
        return cls(
            probabilities=probabilities,
            labels=labels,
            perturbed=np.zeros(b, dtype=bool),
            steps=np.zeros(b, dtype=np.int64),
            exhausted=np.zeros(b, dtype=bool),
            risk_before=zeros,
            risk_after=zeros.copy(),
            delta=np.zeros((b, c), dtype=np.float32),
            budget_use=zeros.copy(),
        )
