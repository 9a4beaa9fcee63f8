"""Fit the risk evaluator and choose tau, epsilon and the ablations' sizes on calibration data.

Calibration data are outputs of the target classifier on the defender's own known members and
non-members, disjoint from every attack evaluation set. Nothing here sees evaluation data.

The rule for tau (one threshold per predicted class, since the risk evaluator's class bias gives
each class its own risk scale). A candidate is a share q: each class's threshold is the q-quantile
of its calibration rows' risk (never below the lowest risk a label-preserving output of that class
can reach), so q of each class's outputs stay untouched. For each candidate the defense is
simulated on the calibration outputs and the simple score attacks of
:func:`veil.python_backend.leakage.threshold_attack_suite` are fitted to them; the same attacks are
fitted to the label-only version of the same outputs, which is what no label-preserving defense
can go below. tau is the *largest* q (fewest outputs perturbed) whose strongest attack is at most ``slack``
above that reference. If none qualifies, q = 0 (every output above its class's reachable floor is
perturbed) and the metrics say so.

At threat 1 the adaptive variant lowers each class's target to the quantile q * ``strict_share``
(``target_shift``, in score units; never below the reachable floor).

epsilon is then the largest per-dimension budget scale any calibration row needed to reach the
target, times ``eps_headroom``, so PGD converges on calibration outputs at intensity 1.

The selective defense (:mod:`selective`, the served ``veil``) is fitted here too: its tables on
all calibration rows, its member index on the training texts' signatures, and its one knob,
the intensity floor, by a stated rule: the smallest floor on a grid whose strongest simple attack,
*cross-fitted* (non-member tables fitted on one half of the calibration non-members, attacked on
the other half with the calibration members, both ways; thresholds themselves cross-fitted), is at
most ``slack`` above the label-only reference on the same rows, both in balanced accuracy and in
TPR at 1% FPR.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from veil.python_backend import selective
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import common_values, minhash, sketch
from veil.python_backend.leakage import (
    crossfit_threshold_suite,
    label_only_floor,
    low_fpr_suite,
    threshold_attack_suite,
)
from veil.python_backend.member_index import MemberIndex
from veil.python_backend.probabilities import softmax
from veil.python_backend.risk import fit_risk_evaluator, logit
from veil.python_backend.selective import class_log_odds

UNBOUNDED_EPS = 1e3


@dataclass(frozen=True)
class CalibrationConfig:
    slack: float = 0.005
    """Allowed excess (balanced-accuracy points / 100) of the strongest calibration attack over
    the label-only reference."""
    candidates: int = 49
    hidden: int = 16
    epochs: int = 300
    strict_share: float = 0.5
    """At threat 1 (adaptive intensity) the risk target drops to the calibration risk quantile
    holding this share of the rows that tau leaves untouched."""
    eps_headroom: float = 2.0
    min_eps: float = 0.5
    seed: int = 0
    gate: tuple[float, float] = (0.5, 0.75)
    """Selective defense: estimated Jaccard similarity to the nearest training text at which the
    membership weight starts rising from 0, and reaches 1."""
    coarse_levels: int = 64
    partial_gate: tuple[float, float] = (0.75, 1.0)
    """Selective defense, partial matches: overlap coefficient with the closest training text at
    which the weight starts rising from 0, and reaches 1. Chosen on the development seed by
    ``python -m veil.privacy.tune_partial`` (with ``member_index.PARTIAL_MIN_SHARED``): the lowest
    mean floor excess under averaged third-crops and half-windows, then the fewest held-out texts
    moved."""
    tracker_common_share: float = 0.003
    """Adaptive intensity leaves out content values in at least this share of the calibration
    non-members (``DefenseArtifact.tracker_common``). Chosen on the development seed by ``python -m
    veil.privacy.tune_adaptive`` with the ring length and the ramp (``AdaptiveConfig``)."""
    floor_grid: tuple[float, ...] = tuple(np.round(np.arange(0, 7) / 6, 4))
    """Intensity floors tried: one per distinct number of levels (64, 32, ..., 1 with 64 levels)."""
    min_floor: float = 1 / 3
    """The lowest floor the rule may choose (16 levels), set on the development seed (SST-2, seed
    100): below it utility did not improve (error-detection AUROC 0.841 at 64 levels, 0.846 at 16)
    while the upper-bound excess over label-only rose (+0.4 and +2.3 pt TPR@1%FPR at 64 levels,
    +0.3 and +0.2 at 16): finer levels only expose more of the map's estimation error."""


@dataclass(frozen=True)
class CropRows:
    """The defender's own crops (:func:`veil.export.crops.defender_crops`) as the classifier scores
    them: of training texts (``member_labels``: each crop's text's label; ``member_signatures``:
    the served fingerprints) and of calibration non-members. The partial-match map's two sides."""

    member_logits: np.ndarray
    member_labels: np.ndarray
    member_signatures: np.ndarray
    nonmember_logits: np.ndarray
    nonmember_labels: np.ndarray


def _temperature_matching(logits: np.ndarray, mean_confidence: float) -> float:
    """T with mean max softmax(z / T) == mean_confidence (bisection in log T)."""
    lo, hi = np.log(0.05), np.log(1e4)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        conf = softmax(logits / np.float32(np.exp(mid))).max(1).mean()
        if conf > mean_confidence:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


@dataclass(frozen=True)
class EditRows:
    """The defender's own word edits (:func:`veil.export.edits.defender_edits`) as the classifier
    scores them: of training texts (``member_labels``: each edit's text's label; the served
    fingerprints and sequence hashes) and of calibration non-members. The near-copy map's two sides."""

    member_logits: np.ndarray
    member_labels: np.ndarray
    member_signatures: np.ndarray
    member_sequences: np.ndarray
    nonmember_logits: np.ndarray
    nonmember_labels: np.ndarray


@dataclass(frozen=True)
class LeaveOutRows:
    """Leave-out part models' logits (:func:`veil.export.leave_out.train_leave_out`): each training
    text's from the part model that did not train on it (index order), and every part model's on
    the calibration non-members (the scale correction's side)."""

    held_out_logits: np.ndarray
    calibration_logits: list[np.ndarray]
    parts: np.ndarray
    """[N] the part model that left each training text out (index order)."""


def leave_out_scale(rows: LeaveOutRows, nonmember_logits: np.ndarray) -> list[list[list[float]]]:
    """:attr:`selective.SelectiveTables.leave_out_q`: per class, the quantile map (part models'
    log-odds of class ``c`` on calibration non-members this model predicts as ``c`` -> this model's
    log-odds) that moves a part model's score onto this model's non-member scale, since a part
    model trained on fewer texts is less confident. [] for a class with fewer than
    :data:`selective.MIN_ROWS` such rows (the part models' scale kept)."""
    label, s = selective.top_log_odds(np.asarray(nonmember_logits, dtype=np.float32))
    out: list[list[list[float]]] = []
    for c in range(np.asarray(nonmember_logits).shape[1]):
        mine = label == c
        if mine.sum() < selective.MIN_ROWS:
            out.append([])
            continue
        parts = np.concatenate([class_log_odds(z[mine], c) for z in rows.calibration_logits])
        out.append([np.quantile(parts, selective.LEVELS).tolist(), np.quantile(s[mine], selective.LEVELS).tolist()])
    return out


def calibrate(
    *,
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
    classifier_sha256: str,
    label_names: list[str],
    index_signatures: np.ndarray | None = None,
    index_labels: np.ndarray | None = None,
    index_logits: np.ndarray | None = None,
    crops: CropRows | None = None,
    index_sequences: np.ndarray | None = None,
    edits: EditRows | None = None,
    leave_out: LeaveOutRows | None = None,
    calibration_signatures: np.ndarray | None = None,
    config: CalibrationConfig = CalibrationConfig(),
    progress: bool = True,
) -> DefenseArtifact:
    """Fit everything on calibration rows. ``index_signatures`` / ``index_labels`` /
    ``index_logits``: signatures (MinHash and content sketch), labels and logits of *all*
    training texts (the selective defense's member index and the member side of its map);
    ``crops``: the partial-match map's rows (none: no partial-match map);
    ``index_sequences``: the training texts' token-sequence hashes (the gate's copy test) and
    ``edits``: the near-copy map's rows (either missing: no near-copy map);
    ``leave_out``: the leave-out part models' logits (none: whole matches go through the maps;
    the build writes the part models beside the artifact, :func:`veil.export.leave_out.export_parts`);
    ``calibration_signatures``: the calibration non-members' (adaptive intensity's mask; none: no mask)."""
    member_logits = np.asarray(member_logits, dtype=np.float32)
    nonmember_logits = np.asarray(nonmember_logits, dtype=np.float32)
    risk, fit = fit_risk_evaluator(
        member_logits, nonmember_logits, hidden=config.hidden, epochs=config.epochs, seed=config.seed
    )
    num_classes = member_logits.shape[1]
    art = DefenseArtifact(
        num_classes=num_classes,
        classifier_sha256=classifier_sha256,
        tau=[0.5] * num_classes,
        eps=UNBOUNDED_EPS,
        target_shift=[0.0] * num_classes,
        temperature=1.0,
        noise_norm=0.0,
        hidden=config.hidden,
        label_names=list(label_names),
        risk_state={k: v.detach().clone() for k, v in risk.state_dict().items()},
    )
    z = np.concatenate([member_logits, nonmember_logits])
    y = np.concatenate([member_labels, nonmember_labels]).astype(np.int64)
    is_member = np.r_[np.ones(len(member_logits), bool), np.zeros(len(nonmember_logits), bool)]
    raw = softmax(z)
    correct = raw.argmax(1) == y
    floor = label_only_floor(correct[is_member], correct[~is_member])
    onehot = np.eye(num_classes, dtype=np.float32)[raw.argmax(1)]
    reference = max(threshold_attack_suite(onehot, y, is_member).values())
    undefended = threshold_attack_suite(raw, y, is_member)

    fixed = DefenseConfig(variant="levelset")  # no threat given: the fixed (threat 0) level set
    base = Defense(art, config=fixed)(z)
    risk_all, pred = base.risk_before, base.labels
    # The least risky output that still keeps each label: every other class exactly the label
    # margin behind. A threshold below that is unreachable for that class.
    least_sharp = np.eye(num_classes, dtype=np.float32) * np.float32(fixed.pgd.label_margin)
    reachable = Defense(art, config=fixed)(least_sharp).risk_before + 1e-6

    def thresholds(share: float) -> list[float]:
        """Per predicted class: the risk quantile leaving ``share`` of that class untouched."""
        out = []
        for c in range(num_classes):
            r = risk_all[pred == c]
            q = float(np.quantile(r, share)) if len(r) else 0.5
            out.append(min(max(q, float(reachable[c])), 1.0 - 1e-9))
        return out

    table = []
    chosen = None
    shares = np.linspace(0.98, 0.0, config.candidates)
    for share in tqdm(shares, desc="calibrating tau", disable=not progress, leave=False):
        tau = thresholds(float(share))
        out = Defense(replace(art, tau=tau), config=fixed)(z)
        attacks = threshold_attack_suite(out.probabilities, y, is_member)
        excess = max(attacks.values()) - reference
        table.append(
            {
                "untouched_share": float(share),
                "tau": tau,
                "perturbed": float(out.perturbed.mean()),
                "excess": float(excess),
            }
        )
        if excess <= config.slack:
            chosen = float(share)
            break
    met = chosen is not None
    if chosen is None:
        chosen = 0.0
    tau = thresholds(chosen)
    strict = thresholds(chosen * config.strict_share)
    shift = [max(0.0, logit(t) - logit(min(st, t))) for t, st in zip(tau, strict, strict=True)]
    art = replace(art, tau=tau, target_shift=shift)

    out = Defense(art, config=fixed)(z)
    moved = out.perturbed
    needed = out.budget_use[moved] * UNBOUNDED_EPS
    eps = max(config.min_eps, float(needed.max()) * config.eps_headroom) if moved.any() else config.min_eps
    noise_norm = float(np.linalg.norm(out.delta[moved], axis=1).mean()) if moved.any() else 0.0
    temperature = _temperature_matching(z, float(out.probabilities.max(1).mean()))
    art = replace(art, eps=eps, noise_norm=noise_norm, temperature=temperature)

    final = Defense(art, config=fixed)(z)
    attacks = threshold_attack_suite(final.probabilities, y, is_member)
    art.metrics = {
        "rows": {"members": len(member_logits), "nonmembers": len(nonmember_logits)},
        "risk_auc_train": fit.train_auc,
        "risk_auc_holdout": fit.holdout_auc,
        "risk_auc_early_stopping": fit.stopping_auc,
        "risk_fit_epochs": fit.epochs,
        "label_only_floor": floor,
        "label_only_reference": reference,
        "attacks_undefended": undefended,
        "attacks_defended": attacks,
        "slack": config.slack,
        "slack_met": met,
        "untouched_share": chosen,
        "tau": tau,
        "lowest_reachable_risk": reachable.tolist(),
        "perturbed_share": float(final.perturbed.mean()),
        "exhausted_share": float(final.exhausted[final.perturbed].mean()) if final.perturbed.any() else 0.0,
        "steps_median": float(np.median(final.steps[final.perturbed])) if final.perturbed.any() else 0.0,
        "mean_abs_delta": float(final.delta_abs[final.perturbed].mean()) if final.perturbed.any() else 0.0,
        "candidates": table,
    }
    art.selective = calibrate_selective(
        member_logits=member_logits,
        member_labels=np.asarray(member_labels),
        nonmember_logits=nonmember_logits,
        nonmember_labels=np.asarray(nonmember_labels),
        training_logits=None if index_logits is None else np.asarray(index_logits, dtype=np.float32),
        training_labels=None if index_logits is None else np.asarray(index_labels),
        config=config,
    )
    if index_signatures is not None and index_labels is not None:
        art.index_signatures = np.asarray(index_signatures, dtype=np.int32)
        art.index_labels = np.asarray(index_labels, dtype=np.int64)
        if index_sequences is not None:
            art.index_sequences = np.asarray(index_sequences, dtype=np.int64)
        index = art.member_index()
        if crops is not None and index is not None and index.sketches is not None:
            fit_partial(art.selective, crops, index)
        if edits is not None and index is not None and index.has_sequences:
            fit_near(art.selective, edits, index)
        if leave_out is not None:
            art.selective.leave_out_q = leave_out_scale(leave_out, nonmember_logits)
            art.index_parts = np.asarray(leave_out.parts, dtype=np.int64)
            correct = np.asarray(leave_out.held_out_logits).argmax(1) == art.index_labels
            art.selective.metrics["leave_out"] = {
                "parts": len(leave_out.calibration_logits),
                "held_out_accuracy": float(correct.mean()),
            }
    if calibration_signatures is not None:
        art.tracker_common = common_values(calibration_signatures, min_share=config.tracker_common_share).tolist()
    return art


def fit_partial(
    tables: selective.SelectiveTables, crops: CropRows, index: MemberIndex, *, whole_matches: bool = False
) -> None:
    """The partial-match map, into ``tables``: the crops of training texts the partial gate
    recognises against every crop of a calibration non-member (what an attacker compares with).
    ``whole_matches``: also the crops the Jaccard gate takes over; off, so the map is fitted on
    the crops it actually serves (development seed, ``python -m veil.privacy.tune_partial`` with
    2 shared values: +0.3 pt more under averaged third-crops with them, +0.1 less under
    half-windows)."""
    signatures = np.asarray(crops.member_signatures)
    overlap, _ = index.partial(sketch(signatures), min_shared=tables.partial_min_shared)
    seen = tables.partial_weight(overlap) > 0
    if not whole_matches:
        seen &= tables.member_weight(index.nearest(minhash(signatures), sketches=sketch(signatures))[0]) < 1
    tables.partial_member_q, tables.partial_nonmember_q = selective.quantile_tables(
        np.asarray(crops.member_logits, dtype=np.float32)[seen],
        np.asarray(crops.member_labels)[seen],
        np.asarray(crops.nonmember_logits, dtype=np.float32),
        np.asarray(crops.nonmember_labels),
    )
    partial = {
        "member_crops": len(seen),
        "member_crops_matched": int(seen.sum()),
        "nonmember_crops": len(crops.nonmember_logits),
    }
    tables.metrics = {**tables.metrics, "partial": partial}  # a new dict: copies of the tables keep theirs


def fit_near(tables: selective.SelectiveTables, edits: EditRows, index: MemberIndex) -> None:
    """The near-copy map, into ``tables``: the defender's edits of training texts that the Jaccard
    gate matches and that are not copies (their sequence hash is no training text's) onto every
    edit of a calibration non-member (what a non-member's edit is served: the gate rarely moves
    them). Per class and correctness; a group with fewer than :data:`selective.MIN_ROWS` rows on
    either side, or with no copies' map, is served by the copies' map. Chosen on the development
    seed (``python -m veil.privacy.ablate_floor``: edits at 1% FPR +0.9 -> +0.1 pt on SST-2,
    +1.0 -> +0.5 on AG News, no other query kind worse by more than 0.1 pt)."""
    signatures = np.asarray(edits.member_signatures)
    similarity, _ = index.nearest(minhash(signatures), sketches=sketch(signatures))
    copies = index.exact(edits.member_sequences)
    near = (tables.member_weight(similarity) > 0) & ~copies
    member_q, nonmember_q = selective.quantile_tables(
        np.asarray(edits.member_logits, dtype=np.float32)[near],
        np.asarray(edits.member_labels)[near],
        np.asarray(edits.nonmember_logits, dtype=np.float32),
        np.asarray(edits.nonmember_labels),
    )
    for c in range(tables.num_classes):
        for k in (0, 1):
            if not tables.member_q[c][k]:  # no copies' map there: the near-copy rows keep theirs (none)
                member_q[c][k], nonmember_q[c][k] = [], []
    tables.near_member_q, tables.near_nonmember_q = member_q, nonmember_q
    fitted = sum(bool(g) for per_class in member_q for g in per_class)
    near_metrics = {
        "member_edits": len(near),
        "member_edits_near": int(near.sum()),
        "member_edits_copies": int(copies.sum()),
        "nonmember_edits": len(edits.nonmember_logits),
        "groups_fitted": fitted,
    }
    tables.metrics = {**tables.metrics, "near": near_metrics}


def _fold_excess(
    tables: selective.SelectiveTables,
    zm: np.ndarray,
    ym: np.ndarray,
    zn: np.ndarray,
    yn: np.ndarray,
    floor: float,
) -> tuple[float, float]:
    """On held-out calibration rows served by ``tables`` at level ``floor`` (members gated with
    weight 1 and their true labels, as the index does): the strongest simple attack's accuracy
    (thresholds cross-fitted within these rows, so finer outputs are not penalised by in-sample
    optimism) and its TPR at 1% FPR (tie-aware), each minus the same on the label-only output."""
    z = np.concatenate([zm, zn])
    y = np.r_[ym, yn].astype(np.int64)
    is_member = np.r_[np.ones(len(zm), bool), np.zeros(len(zn), bool)]
    label, s = selective.top_log_odds(z)
    served = s.copy()
    served[is_member] = tables.map_members(s[is_member], label[is_member], label[is_member] == y[is_member])
    top = tables.confidence(served, label, np.full(len(z), floor))
    probs = tables.probabilities(label, top, selective.class_order(z, label))
    onehot = np.eye(z.shape[1], dtype=np.float32)[label]
    reference = max(crossfit_threshold_suite(onehot, y, is_member).values())
    low_reference = max(low_fpr_suite(onehot, y, is_member).values())
    return (
        max(crossfit_threshold_suite(probs, y, is_member).values()) - reference,
        max(low_fpr_suite(probs, y, is_member).values()) - low_reference,
    )


def calibrate_selective(
    *,
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
    training_logits: np.ndarray | None = None,
    training_labels: np.ndarray | None = None,
    config: CalibrationConfig = CalibrationConfig(),
) -> selective.SelectiveTables:
    """The selective defense's tables and its intensity floor.

    The member side of the map is fitted on every training text (``training_*``; the calibration
    members when not given): the defender knows them all, and then the map is exact ranks on that
    side. The floor is chosen as deployment will meet it: the member side as served, the
    non-member side fitted on one half of the calibration non-members and attacked on the other
    half together with the calibration members, both ways round."""
    tm = member_logits if training_logits is None else training_logits
    ty = member_labels if training_labels is None else training_labels
    rng = np.random.default_rng(config.seed)
    fold_m = rng.permutation(len(member_logits)) % 2
    fold_n = rng.permutation(len(nonmember_logits)) % 2
    folds = []
    for k in (0, 1):
        fit_n = fold_n != k
        tables = selective.fit_tables(
            member_logits=tm,
            member_labels=ty,
            nonmember_logits=nonmember_logits[fit_n],
            nonmember_labels=nonmember_labels[fit_n],
            gate=config.gate,
            coarse_levels=config.coarse_levels,
        )
        folds.append((tables, fold_m == k, ~fit_n))
    sweep = []
    for floor in config.floor_grid:
        excess = [
            _fold_excess(
                tables,
                member_logits[test_m],
                member_labels[test_m],
                nonmember_logits[test_n],
                nonmember_labels[test_n],
                float(floor),
            )
            for tables, test_m, test_n in folds
        ]
        sweep.append(
            {
                "floor": float(floor),
                "excess": float(np.mean([e[0] for e in excess])),
                "tpr_1_excess": float(np.mean([e[1] for e in excess])),
                "folds": [[float(a), float(b)] for a, b in excess],
            }
        )
    ok = [
        r
        for r in sweep
        if r["floor"] >= config.min_floor - 1e-3 and r["excess"] <= config.slack and r["tpr_1_excess"] <= config.slack
    ]
    chosen = ok[0] if ok else sweep[-1]
    tables = selective.fit_tables(
        member_logits=tm,
        member_labels=ty,
        nonmember_logits=nonmember_logits,
        nonmember_labels=nonmember_labels,
        gate=config.gate,
        coarse_levels=config.coarse_levels,
        partial_gate=config.partial_gate,
    )
    tables.intensity_floor = chosen["floor"]
    tables.metrics = {
        "rule": (
            f"smallest floor >= {config.min_floor:.3f} whose cross-fitted accuracy and TPR@1%FPR excess"
            f" are both <= {config.slack}"
        ),
        "slack_met": bool(ok),
        "floor": chosen["floor"],
        "levels": int(tables.bin_count(np.array([chosen["floor"]]))[0]),
        "training_rows": len(tm),
        "sweep": sweep,
    }
    return tables
