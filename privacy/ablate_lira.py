"""Development-seed ablation of the fixed floor under offline LiRA: where should an exact copy of a
training text (and its near copies) land so that a per-example attack cannot tell it?

The whole-match map couples a training text's copy to the non-members' confidence at the *same
quantile of the members' own scores* (per class and correctness): members' outputs then have the
non-members' distribution as a population. LiRA (Carlini et al. 2022) reads each row against
reference models that never trained on it: a member must land where a non-member *of that
difficulty* lands, and a memorised score says little about difficulty. Compared, on the floor (the
fixed intensity's level), with every non-copy row served as before:

- **the maps** (whole-match and near-copy maps: served until the part models);
- **leave-out scores** (``veil-build --leave-out 2``, :mod:`veil.export.leave_out`): the score of
  a part model that never trained on the text, moved onto this model's non-member scale;
- **rank candidates**, no extra training: the copy at the non-members' quantile of its rank among
  training texts by its own score (the map again), by the mean log-odds of the defender's 4 word
  edits of it (memorisation lifts those less), by both ranks' mean, and by the reference models'
  mean (an **oracle** a defender does not have: the ceiling of any ranking without noise).

Scored on the development seed's probe rows (training texts, and non-members outside every split
and the attacker's pool, so no reference model trained on any of them): offline LiRA with the
4 cached reference models, their logits through the same floor without a text (what the suite's
attacker simulates), against label-only's LiRA; accuracy with the threshold fitted on the other
half (10 halvings), AUC and TPR at 1% FPR; the crop probe's strongest single-query attack; the
Spearman correlation of the served confidence with the reference models' mean (members /
non-members: a member should track difficulty as a non-member does). Only copies change, so
benign utility on held-out rows is the floor's.

Then the text read *with its 6 edits* (the suite's augmentation attacks: the text's own output
beside its edits' aggregates): edits of a training text are near copies, served through the
near-copy map of the served model's scores, so with leave-out scores a member's copy disagrees with
its own edits. Compared: edits as served, and a **family offset** (each near copy shifted by its
copy's change), and **the part models for the whole family** (the copy and every near copy
answered by the part model that never trained on the text, on its own tokens: what the defense
step serves). Leave-out scores for the copy alone take LiRA below label-only but the learned
augmentation attack to 75%; the offset brings that back to 57%; the part models for the whole
family keep every augmentation attack at or under label-only's: adopted (docs/evaluation.md,
"Part models for whole matches").

    python -m veil.privacy.ablate_lira --dataset agnews   # builds the development target first
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import roc_auc_score, roc_curve

from veil.export.build_dir import BuildDir
from veil.export.edits import DEFENDER_EDITS, edits
from veil.export.leave_out import PARTS, load_part
from veil.export.pipeline import leave_out_rows
from veil.export.train import predict_logits
from veil.privacy.attacks import Outputs, lira_score, phi
from veil.privacy.baselines import label_only
from veil.privacy.metrics import cross_fitted
from veil.privacy.models import DEV_SEED, EvalConfig, ReferenceModels, attacker_pool, build_cfg
from veil.privacy.probe_crops import Probe
from veil.privacy.query_attacks import augmentation_features, augmentation_suite, expand
from veil.python_backend import selective
from veil.python_backend.calibrate import leave_out_scale
from veil.python_backend.member_index import MemberIndex
from veil.python_backend.probabilities import softmax64
from veil.python_backend.selective import class_log_odds
from veil.python_backend.tokens import text_fingerprints

HALVINGS = 10
EDITS = 6


def group_ranks(value: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Each row's mid-rank of ``value`` within its group, in (0, 1)."""
    u = np.zeros(len(value))
    for g in np.unique(group):
        rows = group == g
        u[rows] = (rankdata(value[rows]) - 0.5) / rows.sum()
    return u


def served_at_ranks(tables, z: np.ndarray, u: np.ndarray, member_label: np.ndarray, level: float) -> np.ndarray:
    """Copies of training texts served at the non-members' quantile ``u`` of their group (the served
    map's non-member side), then through the floor's levels as served."""
    label, s = selective.top_log_odds(z.astype(np.float32))
    served = s.copy()
    wrong = (member_label != label).astype(int)
    for c in range(tables.num_classes):
        for k in (0, 1):
            rows = (label == c) & (wrong == k)
            m = tables._map(c, k, "whole") if rows.any() else None
            if m is not None:
                served[rows] = np.interp(u[rows], selective.LEVELS, m[1])
    top = tables.confidence(served, label, np.full(len(z), level))
    return tables.probabilities(label, top, selective.class_order(z, label))


def lira_readings(member: np.ndarray, target: np.ndarray, labels: np.ndarray, refs: list[np.ndarray], seed: int):
    """Offline LiRA of ``target`` against ``refs`` (every reference OUT): accuracy with the threshold
    fitted on the other half, AUC, TPR at 1% FPR; %."""
    o = Outputs(target, labels)
    o.extra["ref_phi"] = np.stack([phi(Outputs(r, labels)) for r in refs], 1)
    score = lira_score(o)
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(HALVINGS):
        half = rng.permutation(len(score)) < len(score) // 2
        for fit, test in ((half, ~half), (~half, half)):
            fpr, tpr, thr = roc_curve(member[fit], score[fit])
            t = thr[np.argmax(tpr - fpr)]
            pred = score[test] >= t
            accs.append(0.5 * (pred[member[test]].mean() + (~pred[~member[test]]).mean()))
    fpr, tpr, _ = roc_curve(member, score)
    return 100 * float(np.mean(accs)), 100 * roc_auc_score(member, score), 100 * float(tpr[fpr <= 0.01].max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="agnews")
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args(argv)
    probe = Probe.open(args.dataset, seed=DEV_SEED, rows=args.rows)
    art = probe.artifact
    tables, plain = art.selective, art.member_index()
    level = float(tables.level(None, adaptive=False)[0])
    cfg = EvalConfig(dataset=args.dataset, references=4, dp_epsilons=())
    refs = ReferenceModels(cfg, probe.ds, attacker_pool(probe.ds, cfg.pool))
    build = BuildDir(probe.target)
    opts = build.options()
    names = list(opts.input_names)
    texts = list(probe.texts)
    z, _ = probe.score(texts)
    sig, seq = text_fingerprints(build.hf, names, texts, max_length=opts.max_length)
    ref_z = [refs.logits(k, texts) for k in range(cfg.references)]
    member = probe.member
    members = probe.splits.take(probe.ds, "members")
    training = {t: i for i, t in enumerate(members.texts)}
    copy = np.fromiter((t in training for t in texts), dtype=bool, count=len(texts))
    if not np.array_equal(copy, member) or not np.array_equal(plain.exact(seq), member):
        raise RuntimeError("the probe's member rows are not exactly the copies of training texts")

    # The leave-out scores as `veil-build --leave-out 2` fits them (its part models, reused if built).
    calib = probe.splits.take(probe.ds, "nonmember_calib")
    z_cal, _ = probe.score(list(calib.texts))

    part_cfg = replace(build_cfg(cfg, DEV_SEED, probe.target, ()), leave_out=PARTS)
    rows = leave_out_rows(
        part_cfg,
        members,
        list(calib.texts),
        key=json.loads(build.trained_file.read_text())["key"],
        num_labels=probe.ds.num_classes,
    )
    index = MemberIndex(
        plain.signatures, plain.labels, sketches=plain.sketches, sequences=art.index_sequences, parts=rows.parts
    )
    lo_tables = replace(tables, leave_out_q=leave_out_scale(rows, z_cal))

    part_models = [load_part(build.leave_out(k)) for k in range(PARTS)]

    def answered_by_parts(rows_texts: list[str]):
        """:data:`selective.HeldOut` on these texts: the part models (PyTorch, as the build trained them)."""

        def held_out(at: np.ndarray, parts: np.ndarray) -> np.ndarray:
            out = np.full((len(at), probe.ds.num_classes), np.nan, np.float32)  # -1: no whole match
            for k in np.unique(parts[parts >= 0]):
                pick = np.flatnonzero(parts == k)
                chosen = [rows_texts[j] for j in at[pick]]
                out[pick] = predict_logits(*part_models[int(k)], chosen, max_length=opts.max_length)
            return out

        return held_out

    # Every training text's ranks within (predicted class, correctness): the rank candidates.
    z_m, _ = probe.score(list(members.texts))
    lab_m, s_m = selective.top_log_odds(z_m.astype(np.float32))
    group = lab_m * 2 + (lab_m != np.asarray(members.labels))
    z_e, _ = probe.score([e for t in members.texts for e in edits(t, DEFENDER_EDITS, f"defender:{DEV_SEED}")])
    edit_score = class_log_odds_rows(z_e, np.repeat(lab_m, DEFENDER_EDITS)).reshape(-1, DEFENDER_EDITS).mean(1)
    ref_m = [refs.logits(k, list(members.texts)) for k in range(cfg.references)]
    oracle = np.mean([phi(Outputs(softmax64(r), np.asarray(members.labels))) for r in ref_m], 0)
    ranks = {
        "own score (the whole-match map)": group_ranks(s_m, group),
        "edit-ranked": group_ranks(edit_score, group),
        "blend of own and edit ranks": group_ranks(group_ranks(s_m, group) + group_ranks(edit_score, group), group),
        "oracle: reference models' mean": group_ranks(oracle, group),
    }
    served_lo = lo_tables.held_out_scores(rows.held_out_logits, lab_m)
    print(f"training texts {len(members)}; Spearman with the oracle difficulty over all of them:")
    for name, u in {**ranks, "leave-out scores": served_lo}.items():
        print(f"  {name}: {spearmanr(u, oracle)[0]:+.3f}")

    threat = np.full(len(z), level)
    sim = [
        selective.defend(r.astype(np.float32), tables, index=plain, signatures=None, threat=threat).probabilities
        for r in ref_z
    ]
    kw = dict(signatures=sig, sequences=seq, threat=threat)
    mapped = selective.defend(z.astype(np.float32), tables, index=plain, **kw)
    served = selective.defend(z.astype(np.float32), lo_tables, index=index, held_out=answered_by_parts(texts), **kw)
    matched_label = np.asarray(members.labels)[[training.get(t, 0) for t in texts]]
    outputs = {
        "label-only": (label_only(softmax64(z)), [label_only(softmax64(r)) for r in ref_z]),
        "raw": (softmax64(z), [softmax64(r) for r in ref_z]),
        "floor, copies through the whole-match map": (mapped.probabilities, sim),
        "floor, copies served leave-out scores": (served.probabilities, sim),
    }
    for name, u in ranks.items():
        u_rows = np.array([u[training[t]] if c else 0.0 for t, c in zip(texts, copy, strict=True)])
        probs = np.array(mapped.probabilities, dtype=np.float64)
        probs[copy] = served_at_ranks(tables, z[copy], u_rows[copy], matched_label[copy], level)
        outputs[f"floor, copies at the non-members' quantile of their {name}"] = (probs, sim)
    print(
        "output | LiRA accuracy (other half) | AUC | TPR@1%FPR | strongest single query"
        " | Spearman(served, oracle) members / non-members"
    )
    ref_phi = np.mean([phi(Outputs(softmax64(r), probe.labels)) for r in ref_z], 0)
    base = None
    for name, (target, sims) in outputs.items():
        acc, auc, tpr = lira_readings(member, target, probe.labels, sims, DEV_SEED)
        single = max(probe.attack(np.asarray(target, np.float32), 1).values())
        t_phi = phi(Outputs(np.asarray(target, np.float64), probe.labels))
        rho = [spearmanr(t_phi[m], ref_phi[m])[0] for m in (member, ~member)]
        base = base or (acc, tpr)  # label-only, the first row
        cells = f"{acc:.1f} ({acc - base[0]:+.1f}) | {auc:.1f} | {tpr:.1f} | {single:.1f}"
        print(f"{name} | {cells} | {rho[0]:+.2f} / {rho[1]:+.2f}", flush=True)

    # The text and its edits read together (the suite's augmentation attacks: the text's own output
    # beside its edits' aggregates). An edit of a training text is a near copy, served through the
    # near-copy map of the served model's scores; with leave-out scores its copy is not, so the two
    # disagree. "Family offset": every near copy of a training text shifted by its copy's change.
    ed_texts, ed_of = expand(texts, EDITS, DEV_SEED)
    z_ed, _ = probe.score(ed_texts)
    sig_ed, seq_ed = text_fingerprints(build.hf, names, ed_texts, max_length=opts.max_length)
    kw_ed = dict(signatures=sig_ed, sequences=seq_ed, threat=np.full(len(z_ed), level))
    ed_served = selective.defend(z_ed.astype(np.float32), tables, index=plain, **kw_ed)
    ed_label = ed_served.labels
    offset = served.score_after - mapped.score_after  # zero but on copies
    same = ed_label == served.labels[ed_of]
    shifted = ed_served.score_after + np.where(same & (ed_served.member_weight > 0), offset[ed_of], 0.0)
    family = tables.probabilities(
        ed_label, tables.confidence(shifted, ed_label, kw_ed["threat"]), selective.class_order(z_ed, ed_label)
    )

    # "Family through its part model": every near copy of a training text answered like its copy,
    # by the part model that never trained on that text, on this model's scale (as served with
    # `veil-build --leave-out 2`: the defense step runs the part models on whole matches).
    by_part = selective.defend(
        z_ed.astype(np.float32), lo_tables, index=index, held_out=answered_by_parts(ed_texts), **kw_ed
    )
    print(f"members' edits answered by a part model: {by_part.left_out[member[ed_of]].mean():.1%}")
    joint = {
        "label-only": (label_only(softmax64(z)), label_only(softmax64(z_ed))),
        "raw": (softmax64(z), softmax64(z_ed)),
        "floor, copies and near copies through the maps": (mapped.probabilities, ed_served.probabilities),
        "floor, copies served leave-out scores, edits as served": (served.probabilities, ed_served.probabilities),
        "floor, copies leave-out, edits shifted by their copy's change (family offset)": (
            served.probabilities,
            family,
        ),
        "floor, copies and near copies through the part model that never saw the text (served)": (
            served.probabilities,
            by_part.probabilities,
        ),
    }
    print(f"near copies among members' edits: {ed_served.near[member[ed_of]].mean():.1%}")
    print(f"the text and its {EDITS} edits together, accuracy per attack (upper bound, 5 halvings), %")
    for name, (own, ed) in joint.items():
        o = Outputs(np.asarray(own, np.float32), probe.labels)
        o.extra = augmentation_features(np.asarray(ed, np.float32), probe.labels, EDITS)
        evals = {
            a: cross_fitted(a, f, o, member, seed=DEV_SEED, boots=20, splits=5)
            for a, f in augmentation_suite(DEV_SEED).items()
        }
        print(f"{name} | " + " | ".join(f"{a} {100 * e.accuracy:.1f}" for a, e in evals.items()), flush=True)
    return 0


def class_log_odds_rows(z: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each row's log-odds of its own ``label``."""
    out = np.empty(len(z))
    for c in np.unique(label):
        out[label == c] = class_log_odds(z[label == c], int(c))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
