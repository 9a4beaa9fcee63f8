"""Does a caller's own intensity level say who is a member? Measured on the served outputs.

    python -m veil.privacy.level_reading build/privacy/agnews-minilm [--seeds 11,12,13]

Adaptive intensity serves a probing caller coarser levels; a caller sees its level in the outputs
(a coarser level's values are another set). The level is a function of the caller's query pattern
only, so if it is also independent of membership the adaptive output is a function of the floor's
output and an independent level, and no attack reads more from it than from the floor. This
measures that independence where it matters: the evaluation's burst (one id, full speed, every
evaluation row once) against the same rows sent paced (served at the floor): per row, whether the
burst served it coarser (its bytes differ from the floor's), for training texts and non-members,
and that indicator's AUC as a membership score (0.5: the level says nothing). The privacy suite
records it per seed (``level_reading`` in ``privacy.json``); this command reads the cached outputs
of a run (``views.pkl``) without re-querying.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score


def level_reading(adaptive: np.ndarray, floor: np.ndarray, member: np.ndarray) -> dict[str, float]:
    """Rows ``adaptive`` served coarser than ``floor`` (the same rows at the floor level), per
    side, and the AUC of that indicator as a membership score."""
    member = np.asarray(member, dtype=bool)
    moved = (np.asarray(adaptive) != np.asarray(floor)).any(axis=1)
    auc = float(roc_auc_score(member, moved)) if moved.any() and not moved.all() else 0.5
    return {
        "coarser_members": float(moved[member].mean()),
        "coarser_nonmembers": float(moved[~member].mean()),
        "auc": auc,
        "rows": len(member),
    }


def from_views(measured: dict, *, variant: str = "veil") -> dict[str, float] | None:
    """:func:`level_reading` of one seed's cached outputs (the burst is ``variant``'s served view,
    the floor its benign, paced answers); None when the run did not serve it adaptively."""
    burst = next((v for v in measured["views"] if v.name == variant and v.source == "served"), None)
    floor = measured.get("benign", {}).get(variant)
    if burst is None or floor is None:
        return None
    return level_reading(burst.target.probabilities, floor, measured["member"])


def table(readings: dict[int, dict[str, float]]) -> str:
    """Markdown: one row a seed."""
    lines = [
        "| seed | burst rows served coarser than the floor: training texts | non-members"
        " | AUC of that as a membership score |",
        "|---|---|---|---|",
    ]
    for seed, r in sorted(readings.items()):
        lines.append(
            f"| {seed} | {100 * r['coarser_members']:.1f}% | {100 * r['coarser_nonmembers']:.1f}% | {r['auc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a privacy run's dataset folder (seed<k>/views.pkl under it)")
    p.add_argument("--seeds", default=None, help="comma-separated (default: every seed folder)")
    a = p.parse_args(argv)
    root = Path(a.run)
    seeds = (
        [int(s) for s in a.seeds.split(",")]
        if a.seeds
        else sorted(int(d.name[4:]) for d in root.glob("seed*") if d.name[4:].isdigit())
    )
    readings = {}
    for seed in seeds:
        with open(root / f"seed{seed}" / "views.pkl", "rb") as fh:
            r = from_views(pickle.load(fh))
        if r is not None:
            readings[seed] = r
    if not readings:
        p.error(f"no adaptive burst with benign outputs under {root}")
    print(table(readings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
