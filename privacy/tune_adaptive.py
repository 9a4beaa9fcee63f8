"""Development-seed choice of adaptive intensity's duplicate-share ramp and ring (``AdaptiveConfig``).

A caller's threat from probing is ``ramp(dup, duplicate_low, duplicate_high)``, where ``dup`` is
its running share of repeated rows (near-duplicates, or rows contained in its last ``fingerprints``
rows: :func:`~veil.python_backend.fingerprint.repeats`). The ramp and the ring decide two things
at once: how far a prober is pushed (a caller interleaving a text's crops with 29 other texts' is
flagged on only a third to a half of its rows when a 32-row ring holds one earlier crop of each
text; a longer ring holds several), and how often benign traffic is pushed past the floor
(distinct texts on one topic share content tokens, the more of them the longer the ring).

This replays the served :class:`~veil.python_backend.adaptive.ThreatTracker` on development rows
only (dev seed splits; no model is needed: the threat depends on the signatures alone), one caller
at 2 rows/s, one row a request:

- benign: the calibration non-members, each once, in a random order and sorted by class (a
  caller whose traffic is all one topic), SST-2 and AG News;
- probing: 8 crops (a third, a half, a half window) or 6 word edits of each of the development
  members, text after text or interleaved over 30 texts (SST-2).

The grid also tries leaving out of what the tracker sees the content values frequent in the
defender's calibration non-members (``CalibrationConfig.tracker_common_share``; counted here on the
development seed's calibration rows the benign streams do not use), which keeps distinct texts on
one topic apart in a longer ring.

Rule: among the (ring, mask, ramp) triples on the grid whose benign streams have no more rows
coarser than the floor than the previous default (32 rows, no mask, (0.1, 0.5)) has, the one that
serves the most interleaved third-crop rows at calibrated label-only (ties: the shorter ring, as
its state costs memory and Redis traffic in proportion, then no mask, then the higher
``duplicate_low``, then the higher ``duplicate_high``). ``--interleave-wide`` also prints (chooses
nothing) the share for a caller interleaving more texts than the ring holds.

    python -m veil.privacy.tune_adaptive
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from veil.export.crops import crops
from veil.export.data import dedupe, load_dataset
from veil.export.train import packaged_minilm
from veil.privacy.models import DEV_SEED, EvalConfig, attacker_pool, splits_for_seed
from veil.privacy.probe_crops import INTERLEAVE, kind_name, replay_threats, stream_order
from veil.privacy.query_attacks import expand
from veil.python_backend.adaptive import AdaptiveConfig
from veil.python_backend.fingerprint import common_values, without
from veil.python_backend.selective import SelectiveTables
from veil.python_backend.tokens import text_signatures, write_common_tokens

PREVIOUS = (32, None, (0.1, 0.5))
RAMPS = tuple((lo, hi) for lo in (0.1, 0.15, 0.2, 0.25) for hi in (0.25, 0.3, 0.35, 0.4, 0.5) if hi > lo)
RINGS = (32, 64, 128)
MASKS = (None, 0.003)
"""``CalibrationConfig.tracker_common_share`` values tried (None: no mask)."""
GRID = tuple((ring, mask, ramp) for ring in RINGS for mask in MASKS for ramp in RAMPS)
FLOOR = 1 / 3
COARSE_LEVELS = 64
PROBES = (("edit", None, 6), ("subset", 0.3, 8), ("subset", 0.5, 8), ("window", 0.5, 8))


_LADDER = SelectiveTables(
    num_classes=1,
    member_q=[[[], []]],
    nonmember_q=[[[], []]],
    nonmember_sorted=[[]],
    nonmember_correct=[[]],
    tail_profile=[],
    coarse_levels=COARSE_LEVELS,
    intensity_floor=FLOOR,
)
"""Only the served intensity ladder (levels and bin counts) is used: no fitted table is needed."""


def levels(threat: np.ndarray) -> np.ndarray:
    """Confidence levels per class a row is served at: the served ``bin_count`` of its adaptive level."""
    return _LADDER.bin_count(_LADDER.level(np.asarray(threat, dtype=np.float64), adaptive=True))


def dev_signatures(
    dataset: str, *, rows: int, probing: bool
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Benign streams' signatures ({'random', 'by_class'}), if ``probing`` the probes' ({kind: flat
    signatures}) of the development seed, with its common tokens (as ``veil-build`` writes them),
    and the signatures of the calibration non-members the benign streams do not use (what the
    mask of adaptive intensity is counted on, as ``veil-build`` counts it on its calibration rows)."""
    cfg = EvalConfig(dataset=dataset, references=4, dp_epsilons=())
    ds = dedupe(load_dataset(dataset, "train", data_dir=cfg.data_dir))
    splits = splits_for_seed(cfg, ds, attacker_pool(ds, cfg.pool), DEV_SEED)
    members = np.asarray(splits.members, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer"
        shutil.copytree(packaged_minilm(), tok)
        write_common_tokens(tok, [ds.texts[i] for i in members], max_length=cfg.max_length)

        def sig(texts: list[str]) -> np.ndarray:
            return text_signatures(tok, ["input_ids", "attention_mask"], texts, max_length=cfg.max_length)

        calib_all = np.asarray(splits.indices["nonmember_calib"], dtype=np.int64)
        calib = calib_all[:rows]
        benign_sig = sig([ds.texts[i] for i in calib])
        mask_rows = sig([ds.texts[i] for i in calib_all[rows:]])
        by_class = np.argsort(ds.labels[calib], kind="stable")
        benign = {"random": benign_sig, "by_class": benign_sig[by_class]}
        texts = [ds.texts[i] for i in members[:rows]]
        probes = {}
        for kind, keep, k in PROBES if probing else ():
            flat = (
                expand(texts, k, DEV_SEED)[0] if kind == "edit" else [c for t in texts for c in crops(t, k, keep, kind)]
            )
            probes[kind_name(kind, keep)] = sig(flat)
    return benign, probes, mask_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000, help="texts per stream")
    ap.add_argument("--rings", type=int, nargs="+", default=list(RINGS), help="ring lengths to try")
    ap.add_argument("--interleave-wide", type=int, default=100, help="a wider interleave, printed only")
    args = ap.parse_args(argv)
    if PREVIOUS[0] not in args.rings:
        ap.error(f"--rings must include the previous default's {PREVIOUS[0]}")
    benign, probes, masks = {}, {}, {}
    for name in ("sst2", "agnews"):
        benign[name], found, mask_rows = dev_signatures(name, rows=args.rows, probing=name == "sst2")
        probes.update(found)
        masks[name] = {m: None if m is None else common_values(mask_rows, min_share=m) for m in MASKS}
        sizes = ", ".join(f"{m}: {0 if v is None else len(v)} values" for m, v in masks[name].items())
        print(f"{name}: masks of {sizes}", flush=True)
    # Each stream as the tracker sees it under each mask, once (not once per ramp and ring).
    seen_benign = {
        m: {n: {k: without(s, masks[n][m]) for k, s in streams.items()} for n, streams in benign.items()} for m in MASKS
    }
    seen_probes = {m: {k: without(s, masks["sst2"][m]) for k, s in probes.items()} for m in MASKS}
    n = args.rows
    rows = []
    floor_levels = levels(np.zeros(1))[0]
    for ring, share, (lo, hi) in (g for g in GRID if g[0] in args.rings):
        config = replace(AdaptiveConfig(), duplicate_low=lo, duplicate_high=hi, fingerprints=ring)
        coarser = max(
            float((levels(replay_threats(s, np.arange(len(s)), config)) < floor_levels).mean())
            for streams in seen_benign[share].values()
            for s in streams.values()
        )
        label_only = {}
        for kind, s in seen_probes[share].items():
            k = len(s) // n
            for inter in (1, INTERLEAVE, args.interleave_wide):
                order = stream_order(n, k, interleave=inter, seed=DEV_SEED)
                threat = replay_threats(s, order, config)
                label_only[f"{kind}/{inter}"] = float((levels(threat) == 1).mean())
        rows.append(((ring, share, (lo, hi)), coarser, label_only))
        print(
            f"ring {ring} mask {share} ramp ({lo:g}, {hi:g}): benign rows coarser than the floor (worst stream)"
            f" {coarser:.4f}; rows at label-only " + ", ".join(f"{k} {v:.2f}" for k, v in label_only.items()),
            flush=True,
        )
    allowed = next(c for key, c, _ in rows if key == PREVIOUS)
    ok = [r for r in rows if r[1] <= allowed]
    best = max(
        ok,
        key=lambda r: (r[2][f"subset_0.3/{INTERLEAVE}"], -r[0][0], r[0][1] is None, r[0][2][0], r[0][2][1]),
    )
    (ring, share, ramp), coarser, label_only = best
    print(
        f"chosen ring {ring}, mask {share}, ramp {ramp} (benign coarser {coarser:.4f} <= {allowed:.4f}; "
        f"interleaved third-crops at label-only {label_only[f'subset_0.3/{INTERLEAVE}']:.2f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
