"""The defense step: logits (+ query signatures, + the caller's threat) -> probabilities, per batch.

Which variant does what is in :mod:`variants` (one registry); this module dispatches on the
variant's method:

- ``selective`` (:mod:`selective`; the product ``veil``, ``fixed_intensity``, ``perturb_all``):
  member-index gate, non-member quantile map, calibrated construction, threat coarsening.
- ``levelset`` / ``pgd`` / ``noise`` (:mod:`levelset_defense`): the paper's output-risk level set.
- ``temperature``, ``label_only``, ``raw``: one line each, here.

The logits are validated here and only here (:func:`check_logits`): a ``ValueError`` is a
per-request error upstream. The label is the raw argmax (first on ties) in every variant.
"""

from __future__ import annotations

import numpy as np
import torch

from veil.python_backend import selective
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.levelset_defense import LevelSetDefense
from veil.python_backend.member_index import MemberIndex
from veil.python_backend.probabilities import check_logits, softmax, softmax64
from veil.python_backend.result import DefenseConfig, DefenseResult
from veil.python_backend.variants import REGISTRY

VARIANTS = tuple(REGISTRY)

__all__ = ["VARIANTS", "Defense", "DefenseConfig", "DefenseResult"]


class Defense:
    """One variant of the defense, ready to apply to batches (risk evaluator on ``device``)."""

    def __init__(
        self,
        artifact: DefenseArtifact,
        *,
        config: DefenseConfig = DefenseConfig(),
        device: str | torch.device = "cpu",
    ) -> None:
        self.artifact = artifact
        self.config = config
        self.spec = config.spec
        self.num_classes = artifact.num_classes
        self.device = torch.device(device)
        self.levelset: LevelSetDefense | None = None
        self.tables: selective.SelectiveTables | None = None
        self.index: MemberIndex | None = None
        if self.spec.method in ("levelset", "pgd", "noise"):
            self.levelset = LevelSetDefense(artifact, config=config, device=self.device)
        elif self.spec.method == "selective":
            if artifact.selective is None:
                raise ValueError(f"variant {self.spec.name!r} needs selective tables in the artifact; rebuild it")
            self.tables = artifact.selective
            self.index = artifact.member_index()

    @property
    def adaptive(self) -> bool:
        return self.spec.adaptive

    def check(self, logits: np.ndarray) -> None:
        """The one validation of logits: ``ValueError`` naming what is wrong (a per-request error)."""
        check_logits(logits)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} logits per row, got {logits.shape[1]}")

    def look_up(
        self, *, signatures: np.ndarray | None, sequences: np.ndarray | None, rows: int
    ) -> selective.Lookup | None:
        """The member index's answer for ``rows`` queries, from their tokens' signatures and
        sequence hashes alone (no logits): what the step can compute while the classifier runs.
        None for variants without a member gate's look-up."""
        if self.tables is None:
            return None
        return selective.look_up(
            self.tables, index=self.index, signatures=signatures, sequences=sequences, rows=rows, gated=self.spec.gated
        )

    def __call__(
        self,
        logits: np.ndarray,
        *,
        threat: np.ndarray | None = None,
        signatures: np.ndarray | None = None,
        sequences: np.ndarray | None = None,
        held_out: selective.HeldOut | None = None,
        lookup: selective.Lookup | None = None,
        eps_scale: float | None = None,
        checked: bool = False,
    ) -> DefenseResult:
        """Defend a [B, C] batch. ``threat`` [B] in [0, 1] (adaptive variants), ``signatures``
        [B, S] fingerprint of each query's tokens (MinHash and content sketch: the selective gate;
        without them no row is gated), ``sequences`` [B] their token-sequence hashes (the gate's
        copy test; without them a whole match is served as a copy), ``held_out`` the leave-out part
        models on the batch's tokens (:data:`selective.HeldOut`; without it whole matches go
        through the maps). ``lookup``: :meth:`look_up` of these rows, made beforehand (the same
        bytes; then ``signatures`` and ``sequences`` are not read). ``checked``: the caller
        already ran :meth:`check` on these logits.

        Raises ``ValueError`` for non-finite or misshapen logits (a per-request error upstream).
        """
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if not checked:
            self.check(logits)
        method = self.spec.method
        if self.levelset is not None:
            return self.levelset(logits, threat=threat, eps_scale=eps_scale)
        if method == "selective":
            return self._selective(
                logits, threat=threat, signatures=signatures, sequences=sequences, held_out=held_out, lookup=lookup
            )
        labels = logits.argmax(1).astype(np.int64)
        result = DefenseResult.untouched(softmax(logits), labels)
        if method == "label_only":
            result.probabilities = np.eye(self.num_classes, dtype=np.float32)[labels]
            result.perturbed[:] = True
        elif method == "temperature":
            z = logits.astype(np.float64)
            result.probabilities = softmax64(z / self.artifact.temperature)
            result.perturbed[:] = True
        return result

    def _selective(
        self,
        logits: np.ndarray,
        *,
        threat: np.ndarray | None,
        signatures: np.ndarray | None,
        sequences: np.ndarray | None,
        held_out: selective.HeldOut | None,
        lookup: selective.Lookup | None,
    ) -> DefenseResult:
        b = len(logits)
        level = self.tables.level(
            np.zeros(b) if threat is None else np.asarray(threat, dtype=np.float64).reshape(-1),
            adaptive=self.adaptive,
            knob=self.config.intensity,
        )
        level = np.broadcast_to(level, (b,))
        out = selective.defend(
            logits,
            self.tables,
            index=self.index,
            signatures=signatures,
            threat=level,
            gated=self.spec.gated,
            sequences=sequences,
            held_out=held_out,
            lookup=lookup,
        )
        result = DefenseResult.untouched(out.probabilities, out.labels)
        weight = np.maximum(out.member_weight, out.partial_weight)  # whole or partial match to a training text
        moved = (weight > 0) | (level > 0)
        result.perturbed = moved
        result.risk_before = weight
        result.risk_after = np.where(moved, 0.0, weight)
        result.delta[np.arange(b), out.labels] = (out.score_after - out.score_before).astype(np.float32)
        return result
