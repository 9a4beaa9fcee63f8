"""The crop probe's tables over seeds, as docs/evaluation.md prints them: per query kind and output,
the excess over label-only (strongest attack's accuracy; TPR at 1% FPR), mean then per seed, the
same with the attack selected on the other half of each halving (runs that have it), the
strongest TPR attack's 95% interval next to label-only's, and benign traffic's utility.

    python -m veil.privacy.probe_table build/privacy/probe_crops_sst2_1000_seed{11,12,13}.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OUTPUTS = ("raw", "veil_threat_0", "floor_ungated", "adaptive", "adaptive_interleaved")
TITLES = {
    "raw": "raw",
    "veil_threat_0": "floor (fixed intensity)",
    "floor_ungated": "floor without any gate",
    "adaptive": "adaptive, text after text",
    "adaptive_interleaved": "adaptive, 30 interleaved",
}
KINDS = {
    "edit": "6 word-level edits",
    "subset_0.5": "8 crops, 50%",
    "window_0.5": "8 windows, 50%",
    "subset_0.3": "8 crops, 30%",
    "pad": "6 paddings",
}


def cell(values: list[float]) -> str:
    """ "mean (seed / seed / ...)", one decimal, signed."""
    return f"{np.mean(values):+.1f} (" + " / ".join(f"{v:+.1f}" for v in values) + ")"


def _interval(kind: dict, out: str) -> str:
    """One seed's strongest attack by TPR at 1% FPR: "TPR [low, high]", or "-" for older runs."""
    s = kind["strongest"][out]
    if "tpr_attack" not in s:
        return "-"
    lo, hi = s["tpr_1_ci"]
    return f"{kind['tpr_1'][out][s['tpr_attack']]:.1f} [{lo:.1f}, {hi:.1f}]"


def tables(runs: list[dict]) -> str:
    kinds = [k for k in KINDS if all(k in r for r in runs)]
    lines = []
    for key, what in (
        ("excess_over_label_only", "Excess over label-only, strongest attack's accuracy"),
        ("tpr_1_excess_over_label_only", "TPR at 1% FPR, best attack's minus label-only's best"),
    ):
        lines += [f"{what}, pt, mean (per seed):", ""]
        lines += ["| queries per text | " + " | ".join(TITLES[o] for o in OUTPUTS) + " |"]
        lines += ["|---" * (len(OUTPUTS) + 1) + "|"]
        for k in kinds:
            lines.append(f"| {KINDS[k]} | " + " | ".join(cell([r[k][key][o] for r in runs]) for o in OUTPUTS) + " |")
        lines.append("")
    for metric, what in (("accuracy", "accuracy"), ("tpr_1", "TPR at 1% FPR")):
        if not all(metric in r[k].get("selected_excess_over_label_only", {}) for r in runs for k in kinds):
            continue  # runs before the selected reading
        lines += [f"The same, the attack selected on the other half of each halving, by {what}, pt:", ""]
        lines += ["| queries per text | " + " | ".join(TITLES[o] for o in OUTPUTS) + " |"]
        lines += ["|---" * (len(OUTPUTS) + 1) + "|"]
        for k in kinds:
            values = [[r[k]["selected_excess_over_label_only"][metric][o] for r in runs] for o in OUTPUTS]
            lines.append(f"| {KINDS[k]} | " + " | ".join(cell(v) for v in values) + " |")
        lines.append("")
    lines += ["Strongest attack by TPR at 1% FPR, its 95% interval, %, per seed: floor; label-only:", ""]
    lines += ["| queries per text | floor | label-only |", "|---|---|---|"]
    for k in kinds:
        floor = " / ".join(_interval(r[k], "veil_threat_0") for r in runs)
        lines.append(f"| {KINDS[k]} | {floor} | " + " / ".join(_interval(r[k], "label_only") for r in runs) + " |")
    lines.append("")
    b = [r["benign"] for r in runs]
    lines.append(
        "Benign traffic (adaptive): error-detection AUROC "
        + " / ".join(f"{x['adaptive_auroc']:.3f}" for x in b)
        + ", ECE "
        + " / ".join(f"{x['adaptive_ece']:.3f}" for x in b)
        + ", rows coarser than the floor "
        + " / ".join(f"{x['share_coarser_than_floor']:.2%}" for x in b)
        + "."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="probe_crops JSON files, one per seed")
    args = ap.parse_args(argv)
    print(tables([json.loads(p.read_text()) for p in args.runs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
