"""Development-seed choice of the partial-match gate and map (``CalibrationConfig.partial_gate``,
``SelectiveTables.partial_min_shared``, which crops of training texts fit the map).

A crop of a training text (a third of its words, a window) escapes the Jaccard gate; averaged over
8 crops per text, members' crops read sharper than non-members' at the fixed floor. The partial
gate moves a query whose content words are all in one training text (or hold all of one) through
a map fitted on the defender's own crops (:func:`veil.export.crops.defender_crops`, as
``veil-build`` draws them). This scores, on the development seed only, the probe's attacker crops
(:class:`veil.privacy.probe_crops.Probe`: third-crops and half-windows, 8 per text; 1,000 + 1,000
rows) and the defender's crops once, then refits the map per variant and serves the floor:

- shared content values: 2 or 3; ramp over the overlap coefficient: (0.5, 0.75), (0.75, 1),
  (0.99, 1);
- the map's member side: every defender crop the partial gate recognises, or only those the
  Jaccard gate does not take over (weight below 1).

Rule: the lowest mean floor excess over label-only across the two crop kinds; ties: the fewest
held-out full texts moved by the partial gate (benign traffic's cost), then the order above.
Printed: the table with benign utility (held-out full texts, at the floor), and that utility if
every held-out text were moved (a large index on a dataset of overlapping phrases).

    python -m veil.privacy.tune_partial          # about 12 min on 2 cores
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from veil.export.crops import crops, defender_crops
from veil.privacy.baselines import label_only
from veil.privacy.models import DEV_SEED
from veil.privacy.probe_crops import Probe
from veil.privacy.utility import ece, error_detection_auroc
from veil.python_backend import selective
from veil.python_backend.calibrate import CropRows, fit_partial
from veil.python_backend.probabilities import softmax64

KINDS = (("subset", 0.3), ("window", 0.5))
VARIANTS = tuple(
    (shared, gate, fit)
    for shared in (2, 3)
    for gate in ((0.5, 0.75), (0.75, 1.0), (0.99, 1.0))
    for fit in ("recognised", "without_jaccard")
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--crops", type=int, default=8)
    args = ap.parse_args(argv)
    probe = Probe.open(args.dataset, seed=DEV_SEED, rows=args.rows)
    tables, index = probe.artifact.selective, probe.artifact.member_index()
    if index is None or index.sketches is None:
        raise SystemExit("the development target's artifact has no member index with sketches")
    members, calib = probe.splits.take(probe.ds, "members"), probe.splits.take(probe.ds, "nonmember_calib")
    fit_m, of_m = defender_crops(list(members.texts), seed=DEV_SEED)
    fit_n, of_n = defender_crops(list(calib.texts), seed=DEV_SEED)
    zm, sm = probe.score(fit_m)
    zn, _ = probe.score(fit_n)
    rows_fit = CropRows(
        member_logits=zm,
        member_labels=np.asarray(members.labels)[of_m],
        member_signatures=sm,
        nonmember_logits=zn,
        nonmember_labels=np.asarray(calib.labels)[of_n],
    )
    queries = {"exact": (1, *probe.score(probe.texts))}
    for kind, keep in KINDS:
        flat = [c for t in probe.texts for c in crops(t, args.crops, keep, kind)]
        queries[f"{kind}_{keep:g}"] = (args.crops, *probe.score(flat))
    reference = {name: max(probe.attack(label_only(softmax64(z)), k).values()) for name, (k, z, _) in queries.items()}
    level = float(tables.level(None, adaptive=False)[0])
    held_out = ~probe.member
    print(f"floor excess over label-only, pt ({args.rows} + {args.rows} rows, development seed {DEV_SEED})", flush=True)
    print("variant                                  | " + " | ".join(queries) + " | benign AUROC / ECE | texts moved")
    rows = []
    fitted = {}
    for variant in (None, *VARIANTS):
        if variant is None:
            t = replace(tables, partial_member_q=[], partial_nonmember_q=[])
        else:
            shared, gate, fit = variant
            t = replace(tables, partial_gate=gate, partial_min_shared=shared)
            fit_partial(t, rows_fit, index, whole_matches=fit == "recognised")
        excess, util, moved = {}, "", 0.0
        for name, (k, z, sig) in queries.items():
            out = selective.defend(z.astype(np.float32), t, index=index, signatures=sig, threat=np.full(len(z), level))
            excess[name] = round(max(probe.attack(out.probabilities, k).values()) - reference[name], 1)
            if name == "exact":
                p, y = out.probabilities[held_out], probe.labels[held_out]
                util = f"{error_detection_auroc(p, y):.3f} / {ece(p, y):.3f}"
                moved = float((out.partial_weight[held_out] > 0).mean())
        crop_mean = float(np.mean([excess[f"{kind}_{keep:g}"] for kind, keep in KINDS]))
        label = "no partial map" if variant is None else f"{variant[0]} shared, ramp {variant[1]}, {variant[2]}"
        print(
            f"{label:40s} | " + " | ".join(f"{v:+.1f}" for v in excess.values()) + f" | {util} | {moved:.1%}",
            flush=True,
        )
        if variant is not None:
            rows.append((crop_mean, moved, variant))
            fitted[variant] = t
    chosen = min(rows, key=lambda r: (round(r[0], 2), r[1]))
    print(
        f"chosen: {chosen[2][0]} shared values, ramp {chosen[2][1]}, fit on {chosen[2][2]} crops"
        f" (mean crop excess {chosen[0]:+.2f} pt, {chosen[1]:.1%} of held-out texts moved)"
    )
    # Benign cost where every text is a partial match (a large index on a dataset of overlapping
    # phrases): each held-out text through the chosen map, matched to its predicted or its true label.
    t = fitted[chosen[2]]
    z = queries["exact"][1].astype(np.float32)[held_out]
    y = probe.labels[held_out]
    label, s = selective.top_log_odds(z)
    order = selective.class_order(z, label)
    for name, correct in (("the predicted label", np.ones(len(z), bool)), ("the true label", label == y)):
        top = t.confidence(t.map_members(s, label, correct, kind="partial"), label, np.full(len(z), level))
        p = t.probabilities(label, top, order)
        auroc, calibration = error_detection_auroc(p, y), ece(p, y)
        print(f"every held-out text moved, matched to {name}: AUROC {auroc:.3f}, ECE {calibration:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
