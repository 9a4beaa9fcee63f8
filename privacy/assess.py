"""One defense as the attacker sees it, and everything measured on it: every attack at both
attacker strengths, query attacks per client-id mode, utility on held-out rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from veil.privacy.attacks import Outputs, floor, suite
from veil.privacy.metrics import CROSSFIT_SPLITS, cross_fitted, realistic
from veil.privacy.query_attacks import augmentation_suite, repeat_suite
from veil.privacy.utility import utility


@dataclass
class QueryView:
    """Query-attack features (``extra``: aug_*, rep_*) for a subset of target and shadow rows."""

    target: Outputs
    target_member: np.ndarray
    shadow: Outputs
    shadow_member: np.ndarray
    nondeterministic: int = 0


@dataclass
class View:
    """A defense's outputs: target evaluation rows, the attacker's shadow rows (same defense)."""

    name: str
    family: str
    knob: float | None
    source: str  # "served", "baseline", "dp", "offline"
    target: Outputs
    shadow: Outputs
    query: dict[str, QueryView] = field(default_factory=dict)


def _both(name: str, fit, target, member, shadow, shadow_member, seed: int, boots: int, splits: int) -> dict:
    return {
        "realistic": realistic(name, fit, shadow, shadow_member, target, member, seed=seed, boots=boots).row(),
        "upper_bound": cross_fitted(name, fit, target, member, seed=seed, boots=boots, splits=splits).row(),
    }


def assess(
    view: View,
    member: np.ndarray,
    shadow_member: np.ndarray,
    *,
    raw: np.ndarray,
    lira: bool,
    seed: int,
    boots: int,
    splits: int = CROSSFIT_SPLITS,
    blind: bool = False,
) -> dict:
    """Every measurement on one defense. ``raw``: the undefended outputs of the target rows;
    ``splits``: halvings the upper-bound attacker is cross-fitted over."""
    t, s = view.target, view.shadow
    attacks = {
        name: _both(name, fit, t, member, s, shadow_member, seed, boots, splits)
        for name, fit in suite(lira=lira, blind=blind, seed=seed).items()
    }
    query = {}
    for mode, q in view.query.items():
        fits = augmentation_suite(seed) | (repeat_suite(seed) if "rep_mean" in q.target.extra else {})
        query[mode] = {
            "attacks": {
                name: _both(name, fit, q.target, q.target_member, q.shadow, q.shadow_member, seed, boots, splits)
                for name, fit in fits.items()
            },
            "nondeterministic": q.nondeterministic,
            "rows": len(q.target),
        }
    held = ~member
    return {
        "family": view.family,
        "knob": view.knob,
        "source": view.source,
        "accuracy_members": float(t.correct[member].mean()),
        "accuracy_heldout": float(t.correct[held].mean()),
        "floor": floor(t, member),
        "attacks": attacks,
        "query": query,
        "utility": utility(t.probabilities[held], t.labels[held], raw[held]),
    }
