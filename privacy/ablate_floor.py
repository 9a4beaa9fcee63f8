"""Development-seed ablation of the fixed floor at 1% FPR: what averaged word edits read there, and
what changes of the floor do to it. Chooses nothing. Its "served" row is the floor as served
before the near-copy map (no sequence hashes passed: every whole match through the copies' map),
the baseline the edit-fitted near-copy map was adopted against; that map is now served
(:func:`veil.python_backend.calibrate.fit_near`).

Under 6 averaged word edits the floor's learned attack reads TPR at 1% FPR about a point above
label-only's, as raw outputs do, although the member gate moves 95% of members' edits onto what
non-members get. The suspected mechanism: a member's label survives edits (memorisation) whatever
its confidence, a non-member's mostly when it is confident; the whole-match map sends members to
the non-members' confidence distribution *of their class and correctness*, so a member that the
map sends low keeps a stable label, which non-members at that confidence rarely have. Two changes
are scored against the served floor (16 levels):

- **stability-weighted map**: the map's non-member side re-weighted by each calibration
  non-member's label stability under the defender's own edits (4 per text, seeded apart from any
  attacker): all kept (``hard``), or weight = share kept to the power 1, 2 or 4. Members then land
  where stable non-members are.
- **stability-ranked map**: the single query's distribution kept, the coupling changed: within
  each (class, correctness) group, training texts are ranked by their label's stability under the
  defender's edits (all kept, one lost, more), then by score, and each stratum is sent to its own
  slice of the non-members' quantiles, the least stable to the lowest. Members' mapped scores still
  have the non-members' distribution (the slices tile it), but a member the map sends low is now
  one whose label is unstable too, as a non-member there mostly is. The served step would need
  each training text's stratum in the artifact (one byte a text) and the matched text's stratum
  from the look-up; here a second index whose labels carry the stratum stands in for it.
- **stability-conditional map**: per stratum, the whole-match map fitted on that stratum's
  members and that stratum's calibration non-members: members land where non-members as stable as
  they are land, at the price of the single query's marginal (the members' strata shares are not
  the non-members').
- **edit-fitted near-copy map**: a query the gate matches to a training text but that is not a
  copy of one (told by the text: MinHash estimates similarity 1 for most swaps and duplications)
  goes through a whole-match map fitted on what such queries are: the defender's own edits of
  training texts that the gate matches and that are not copies, onto its edits of calibration
  non-members (which the gate does not move: what a non-member's edit is served). Exact copies
  keep the served map, so the single query cannot change. The suspected mechanism it targets: the
  served map is fitted on the training texts themselves, so an edit, a little less confident than
  its text, lands in the members' lower quantiles and is sent low, while its label stays
  (memorised): low and stable is the member's tell.
- **coarser floor**: 8 or 4 confidence levels per class (the served map).

Scored on the development seed's probe rows (1,000 + 1,000): the texts themselves (one query),
6 averaged edits, 6 paddings and 8 crops keeping half the words (a random subset); excess over
label-only by the maximum over the attacks and by the attack selected on the other half of each
halving (:func:`veil.privacy.summary.selected`), accuracy and TPR at 1% FPR; the suite's reading
over all kinds; and benign utility on the held-out texts.

    python -m veil.privacy.ablate_floor                    # about 15 min on 2 cores
    python -m veil.privacy.ablate_floor --dataset agnews   # trains the development target first
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from veil.export.crops import crops
from veil.privacy.baselines import label_only
from veil.privacy.models import DEV_SEED
from veil.privacy.probe_crops import PADS, Probe, padding_filler, pads, scored
from veil.privacy.query_attacks import expand
from veil.privacy.utility import ece, error_detection_auroc
from veil.python_backend import selective
from veil.python_backend.fingerprint import minhash, sketch
from veil.python_backend.member_index import MemberIndex
from veil.python_backend.probabilities import softmax64

DEFENDER_EDITS = 4
EDITS = 6
CROPS = 8
WEIGHTS = {"hard": None, "share": 1.0, "share^2": 2.0, "share^4": 4.0}
"""Stability weightings: ``None`` keeps only calibration non-members whose every edit kept the label."""
STRATA = 3
"""Stability strata of the ranked map: labels kept under all defender edits, all but one, fewer."""


def weighted_quantiles(x: np.ndarray, w: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Quantiles of ``x`` under weights ``w`` >= 0: each row at the weight before it over the total
    less the last row's, so equal weights give ``np.quantile``'s (linear) and zero-weight rows drop out."""
    keep = np.asarray(w, dtype=np.float64) > 0
    x, w = np.asarray(x, dtype=np.float64)[keep], np.asarray(w, dtype=np.float64)[keep]
    order = np.argsort(x, kind="stable")
    x, w = x[order], w[order]
    if len(x) == 1:
        return np.full(len(np.atleast_1d(q)), x[0])
    at = (np.cumsum(w) - w) / (w.sum() - w[-1])
    return np.interp(q, at, x)


def stability_tables(
    tables: selective.SelectiveTables, logits: np.ndarray, labels: np.ndarray, weight: np.ndarray
) -> selective.SelectiveTables:
    """``tables`` with the whole-match map's non-member side re-weighted per calibration row."""
    predicted, s = selective.top_log_odds(np.asarray(logits, dtype=np.float32))
    correct = predicted == np.asarray(labels)
    nonmember_q = [[list(g) for g in per_class] for per_class in tables.nonmember_q]
    for c in range(tables.num_classes):
        for k, side in ((0, correct), (1, ~correct)):
            rows = (predicted == c) & side
            if nonmember_q[c][k] and weight[rows].sum() >= selective.MIN_ROWS:
                nonmember_q[c][k] = weighted_quantiles(s[rows], weight[rows], selective.LEVELS).tolist()
    return replace(tables, nonmember_q=nonmember_q)


def ranked_tables(
    tables: selective.SelectiveTables, member_logits: np.ndarray, member_labels: np.ndarray, stratum: np.ndarray
) -> list[selective.SelectiveTables]:
    """Per stability stratum (0 = least stable): ``tables`` with the whole-match map sending the
    stratum's members (quantiles of their own scores) onto its slice ``[P(stratum < t), P(stratum
    <= t)]`` of the non-members' quantiles, per (class, correctness) group. A group or stratum with
    fewer than :data:`selective.MIN_ROWS` members keeps the served map."""
    predicted, s = selective.top_log_odds(np.asarray(member_logits, dtype=np.float32))
    correct = predicted == np.asarray(member_labels)
    stratum = np.asarray(stratum)
    out = []
    for t in range(int(stratum.max()) + 1):
        member_q = [[list(g) for g in per_class] for per_class in tables.member_q]
        nonmember_q = [[list(g) for g in per_class] for per_class in tables.nonmember_q]
        for c in range(tables.num_classes):
            for k, side in ((0, correct), (1, ~correct)):
                group = (predicted == c) & side
                inner = group & (stratum == t)
                if not (tables.member_q[c][k] and tables.nonmember_q[c][k]) or inner.sum() < selective.MIN_ROWS:
                    continue
                lo, hi = (stratum[group] < t).mean(), (stratum[group] <= t).mean()
                member_q[c][k] = np.quantile(s[inner], selective.LEVELS).tolist()
                nq = np.asarray(tables.nonmember_q[c][k], dtype=np.float64)
                nonmember_q[c][k] = np.interp(lo + selective.LEVELS * (hi - lo), selective.LEVELS, nq).tolist()
        out.append(replace(tables, member_q=member_q, nonmember_q=nonmember_q))
    return out


def conditional_tables(
    tables: selective.SelectiveTables,
    *,
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    member_stratum: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
    nonmember_stratum: np.ndarray,
) -> list[selective.SelectiveTables]:
    """Per stability stratum: ``tables`` with the whole-match map fitted on that stratum's members
    and that stratum's calibration non-members alone (per class and correctness), so a member is sent
    where non-members *as stable as it* are. A group with fewer than :data:`selective.MIN_ROWS` rows
    on either side keeps the served map. Members are more stable than non-members, so the single
    query's marginal is the strata's mixture at the members' shares, not the non-members'."""
    member_stratum, nonmember_stratum = np.asarray(member_stratum), np.asarray(nonmember_stratum)
    out = []
    for t in range(int(max(member_stratum.max(), nonmember_stratum.max())) + 1):
        m, n = member_stratum == t, nonmember_stratum == t
        if not (m.any() and n.any()):
            out.append(tables)
            continue
        out.append(
            refit(
                tables,
                np.asarray(member_logits)[m],
                np.asarray(member_labels)[m],
                np.asarray(nonmember_logits)[n],
                np.asarray(nonmember_labels)[n],
            )
        )
    return out


def refit(
    tables: selective.SelectiveTables,
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
) -> selective.SelectiveTables:
    """``tables`` with the whole-match map refitted on these rows, per class and correctness; a
    group with fewer than :data:`selective.MIN_ROWS` rows on either side keeps the served map."""
    mq, nq = selective.quantile_tables(
        np.asarray(member_logits, dtype=np.float32),
        np.asarray(member_labels),
        np.asarray(nonmember_logits, dtype=np.float32),
        np.asarray(nonmember_labels),
    )
    member_q = [[list(g) for g in per_class] for per_class in tables.member_q]
    nonmember_q = [[list(g) for g in per_class] for per_class in tables.nonmember_q]
    for c in range(tables.num_classes):
        for k in (0, 1):
            if mq[c][k] and nq[c][k] and tables.member_q[c][k]:
                member_q[c][k], nonmember_q[c][k] = mq[c][k], nq[c][k]
    return replace(tables, member_q=member_q, nonmember_q=nonmember_q)


def near_tables(
    tables: selective.SelectiveTables,
    *,
    member_edit_logits: np.ndarray,
    member_edit_labels: np.ndarray,
    near: np.ndarray,
    nonmember_edit_logits: np.ndarray,
    nonmember_edit_labels: np.ndarray,
) -> selective.SelectiveTables:
    """``tables`` with the whole-match map fitted on the defender's edits: training texts' edits
    that the gate matches but not exactly (``near``; labels: their texts') onto calibration
    non-members' edits (labels: their texts'), per class and correctness. A group with fewer than
    :data:`selective.MIN_ROWS` rows on either side keeps the served map."""
    near = np.asarray(near, dtype=bool)
    return refit(
        tables,
        np.asarray(member_edit_logits)[near],
        np.asarray(member_edit_labels)[near],
        nonmember_edit_logits,
        nonmember_edit_labels,
    )


def near_defender(
    tables: selective.SelectiveTables, near: selective.SelectiveTables, index: MemberIndex
) -> Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]:
    """``(logits, signatures, copy, level) -> probabilities``: copies of a training text (``copy``;
    served, a hash of the text's tokens in the index would tell) and unmatched rows served as before,
    other matches by ``near``'s whole-match map. MinHash cannot tell: most edits of a short text
    estimate similarity 1."""

    def serve(z: np.ndarray, sig: np.ndarray, copy: np.ndarray, level: float) -> np.ndarray:
        z32, copy = z.astype(np.float32), np.asarray(copy, dtype=bool)
        out = np.empty(z.shape, np.float32)
        for rows, t in ((copy, tables), (~copy, near)):  # each row served once, by its own tables
            if rows.any():
                threat = np.full(int(rows.sum()), level)
                out[rows] = selective.defend(
                    z32[rows], t, index=index, signatures=sig[rows], threat=threat
                ).probabilities
        return out

    return serve


def strata(kept: np.ndarray) -> np.ndarray:
    """Stability stratum from the number of defender edits that kept the label (of
    :data:`DEFENDER_EDITS`): ``STRATA - 1`` all kept, down to 0 for ``STRATA - 1`` or more lost."""
    lost = DEFENDER_EDITS - np.asarray(kept)
    return STRATA - 1 - np.minimum(lost, STRATA - 1)


def ranked_defender(
    per_stratum: list[selective.SelectiveTables], index: MemberIndex, stratum_index: MemberIndex
) -> Callable[[np.ndarray, np.ndarray, float], np.ndarray]:
    """``(logits, signatures, level) -> probabilities``: each row served by its stratum's tables, the
    stratum of the training text the look-up matches (``stratum_index``: the member index with
    ``label + classes * stratum`` as labels; the same look-up, so the same match)."""
    classes = per_stratum[0].num_classes

    def serve(z: np.ndarray, sig: np.ndarray, level: float) -> np.ndarray:
        _, code = stratum_index.nearest(minhash(sig), sketches=sketch(sig))
        t = np.where(code >= 0, code // classes, 0)
        z32, threat = z.astype(np.float32), np.full(len(z), level)
        outs = [selective.defend(z32, tb, index=index, signatures=sig, threat=threat) for tb in per_stratum]
        return np.stack([o.probabilities for o in outs])[t, np.arange(len(z))]

    return serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args(argv)
    probe = Probe.open(args.dataset, seed=DEV_SEED, rows=args.rows)
    tables, index = probe.artifact.selective, probe.artifact.member_index()
    floor = float(tables.level(None, adaptive=False)[0])
    calib = probe.splits.take(probe.ds, "nonmember_calib")
    z_calib, _ = probe.score(list(calib.texts))
    z_edits, _ = probe.score(expand(list(calib.texts), DEFENDER_EDITS, f"defender:{DEV_SEED}")[0])
    calib_edit_labels = np.repeat(np.asarray(calib.labels), DEFENDER_EDITS)
    predicted = selective.top_log_odds(z_calib.astype(np.float32))[0]
    kept = (z_edits.argmax(1).reshape(-1, DEFENDER_EDITS) == predicted[:, None]).mean(1)
    print(f"calibration non-members whose label survives all {DEFENDER_EDITS} defender edits: {(kept == 1).mean():.1%}")
    members = probe.splits.take(probe.ds, "members")
    if len(members) != len(index) or not np.array_equal(np.asarray(members.labels), index.labels):
        raise RuntimeError("the member index is not in the training texts' order")
    z_members, _ = probe.score(list(members.texts))
    training = frozenset(members.texts)

    def copies_of_training(rows: list[str]) -> np.ndarray:
        return np.fromiter((r in training for r in rows), dtype=bool, count=len(rows))

    member_edit_texts = expand(list(members.texts), DEFENDER_EDITS, f"defender:{DEV_SEED}")[0]
    z_member_edits, sig_member_edits = probe.score(member_edit_texts)
    member_edit_sim, _ = index.nearest(minhash(sig_member_edits), sketches=sketch(sig_member_edits))
    near = (tables.member_weight(member_edit_sim) > 0) & ~copies_of_training(member_edit_texts)
    print(
        f"defender edits of training texts the gate matches, not copies: {near.mean():.1%} "
        f"(similarity estimated 1: {(member_edit_sim >= 1.0).mean():.1%})"
    )
    member_pred = selective.top_log_odds(z_members.astype(np.float32))[0]
    stratum = strata((z_member_edits.argmax(1).reshape(-1, DEFENDER_EDITS) == member_pred[:, None]).sum(1))
    calib_stratum = strata(np.rint(kept * DEFENDER_EDITS).astype(int))
    print(f"training texts per stratum (least stable first): {np.bincount(stratum, minlength=STRATA).tolist()}")
    print(f"calibration non-members per stratum: {np.bincount(calib_stratum, minlength=STRATA).tolist()}")
    stratum_index = MemberIndex(index.signatures, index.labels + tables.num_classes * stratum, sketches=index.sketches)
    ranked = ranked_defender(ranked_tables(tables, z_members, members.labels, stratum), index, stratum_index)
    conditional = ranked_defender(
        conditional_tables(
            tables,
            member_logits=z_members,
            member_labels=members.labels,
            member_stratum=stratum,
            nonmember_logits=z_calib,
            nonmember_labels=calib.labels,
            nonmember_stratum=calib_stratum,
        ),
        index,
        stratum_index,
    )
    edit_fitted = near_defender(
        tables,
        near_tables(
            tables,
            member_edit_logits=z_member_edits,
            member_edit_labels=np.repeat(np.asarray(members.labels), DEFENDER_EDITS),
            near=near,
            nonmember_edit_logits=z_edits,
            nonmember_edit_labels=calib_edit_labels,
        ),
        index,
    )
    filler = padding_filler(probe)
    flat = {
        "texts": (1, list(probe.texts)),
        "edits": (EDITS, expand(probe.texts, EDITS, probe.seed)[0]),
        "paddings": (PADS, [p for t in probe.texts for p in pads(t, PADS, filler)]),
        "half-crops": (CROPS, [c for t in probe.texts for c in crops(t, CROPS, 0.5, "subset")]),
    }
    queries = {name: (k, *probe.score(rows)) for name, (k, rows) in flat.items()}
    copies = {name: copies_of_training(rows) for name, (_, rows) in flat.items()}
    reference = {name: _readings(probe, label_only(softmax64(z)), k) for name, (k, z, _) in queries.items()}

    def served(t: selective.SelectiveTables, level: float) -> Callable[..., np.ndarray]:
        return lambda z, sig, copy: (
            selective.defend(
                z.astype(np.float32), t, index=index, signatures=sig, threat=np.full(len(z), level)
            ).probabilities
        )

    variants = {"served (16 levels)": served(tables, floor)}
    variants["edit-fitted near-copy map"] = lambda z, sig, copy: edit_fitted(z, sig, copy, floor)
    variants["stability-ranked map"] = lambda z, sig, copy: ranked(z, sig, floor)
    variants["stability-conditional map"] = lambda z, sig, copy: conditional(z, sig, floor)
    for name, power in WEIGHTS.items():
        weight = (kept == 1).astype(np.float64) if power is None else kept**power
        weighted = stability_tables(tables, z_calib, calib.labels, weight)
        variants[f"stability-weighted map, {name}"] = served(weighted, floor)
    for levels in (8, 4):
        q = 1.0 - np.log2(levels) / np.log2(tables.coarse_levels)
        variants[f"coarser floor, {levels} levels"] = served(tables, float(q))
    held_out = ~probe.member
    print("excess over label-only, pt: accuracy max / selected, TPR at 1% FPR max / selected; benign AUROC / ECE")
    print("all kinds: the suite's reading, the strongest over every kind's attacks against label-only's (acc / TPR)")
    print("variant | " + " | ".join(queries) + " | all kinds | benign")
    for name, serve in variants.items():
        cells, readings = [], {}
        for query, (k, z, sig) in queries.items():
            probs = serve(z, sig, copies[query])
            readings[query] = got = _readings(probe, probs, k)
            cells.append(" / ".join(f"{g - r:+.1f}" for g, r in zip(got, reference[query], strict=True)))
            if query == "texts":
                p, y = probs[held_out], probe.labels[held_out]
                benign = f"{error_detection_auroc(p, y):.3f} / {ece(p, y):.3f}"
        cells.append(" / ".join(f"{d:+.1f}" for d in strongest_excess(readings, reference)))
        print(f"{name} | " + " | ".join(cells) + f" | {benign}", flush=True)
    return 0


def strongest_excess(
    readings: dict[str, tuple[float, ...]], reference: dict[str, tuple[float, ...]]
) -> tuple[float, float]:
    """The served suite's reading over several query kinds: the strongest attack of any kind on the
    output minus label-only's strongest of any kind (a label-only attacker may query edits too),
    by accuracy and by TPR at 1% FPR (each the maximum over the attacks; readings as
    :func:`_readings`)."""
    return tuple(max(r[i] for r in readings.values()) - max(r[i] for r in reference.values()) for i in (0, 2))


def _readings(probe: Probe, probs: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """Accuracy (max over attacks, selected), TPR at 1% FPR (max, selected), %: the crop probe's
    own readings (:func:`veil.privacy.probe_crops.scored`)."""
    row, tpr, _, chosen = scored(probe, {"out": probs}, k)
    return (
        max(row["out"].values()),
        chosen["out"]["accuracy"] or 0.0,
        max(tpr["out"].values(), default=0.0),
        chosen["out"]["tpr_1"] or 0.0,
    )


if __name__ == "__main__":
    raise SystemExit(main())
