"""The one registry of defense variants: what each moves, onto what, how, and under which name it is served.

Like opacus's accountants, a variant is a frozen record; the defense (:mod:`defense`), the
repository spec (:mod:`veil.model_repository.spec`) and the evaluation (:mod:`veil.privacy`)
read this table and nothing else. Adding a variant is adding one record (and, if it moves
outputs in a new way, the method that does it in :mod:`defense`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    method: str
    """How outputs are computed: ``selective`` (member-index gate, non-member quantile map,
    threat coarsening), ``levelset`` (the paper's risk level set: closed form for two classes,
    canonical point for more), ``pgd`` (iterative minimal label-preserving PGD), ``noise``,
    ``temperature``, ``label_only``, ``raw``."""
    gated: bool
    """Only rows judged risky are moved; the others are served as the raw model would."""
    onto: str
    """What moved outputs land on, in words (for docs and reports)."""
    adaptive: bool = False
    """The caller's threat level (query pattern) changes the output."""
    ablation: bool = True
    """Served beside the defense for comparison only (benchmark builds)."""
    description: str = ""

    @property
    def step_model(self) -> str:
        """The python-backend model of the defense step."""
        return "mia_defense" if self.name == "veil" else f"mia_defense_{self.name}"

    @property
    def ensemble(self) -> str:
        """The ensemble callers use (text in, probabilities and label out)."""
        return "veil_defended" if self.name == "veil" else f"veil_{self.name}"


REGISTRY: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "veil",
            "selective",
            gated=True,
            onto="what a non-member of the same class, correctness and rank would get; coarser as threat rises",
            adaptive=True,
            ablation=False,
            description="the product: selective, calibrated, adaptive",
        ),
        Variant(
            "fixed_intensity",
            "selective",
            gated=True,
            onto="as veil at a fixed threat level (the knob)",
            description="veil without adaptive intensity",
        ),
        Variant(
            "perturb_all",
            "selective",
            gated=False,
            onto="every row mapped as if it were a member",
            description="veil without the membership gate",
        ),
        Variant(
            "levelset",
            "levelset",
            gated=True,
            onto="the risk level set r = tau (closed form; canonical point for C > 2)",
            adaptive=True,
            description="the paper's design, first round: output-risk gate, one point per class",
        ),
        Variant(
            "pgd",
            "pgd",
            gated=True,
            onto="the risk level set r = tau, minimal label-preserving PGD step",
            description="the paper's method as published (iterative PGD)",
        ),
        Variant(
            "random_noise",
            "noise",
            gated=True,
            onto="raw + deterministic noise of the level-set move's mean size",
        ),
        Variant("temperature", "temperature", gated=False, onto="softmax(z / T)"),
        Variant(
            "memguard",
            "levelset",
            gated=False,
            onto="r = 0.5 of the defender's own attack model (MemGuard-style)",
        ),
        Variant("label_only", "label_only", gated=False, onto="the one-hot predicted label"),
        Variant("none", "raw", gated=False, onto="nothing: the raw softmax"),
    )
}

SERVED = tuple(name for name in REGISTRY if name != "none")
"""Variants that get their own served defense step ("none" is served as the raw ensemble)."""


def get(name: str) -> Variant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown defense variant {name!r}; choose from {tuple(REGISTRY)}") from None
