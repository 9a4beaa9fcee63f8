"""Development-seed probe: do gate-evading query attacks (heavy crops of a text) leak through Veil?

The member gate recognises a query whose token set is close to a training text's (estimated
Jaccard >= 0.5). An attacker who knows that sends *crops* (a random half of the words, or a
window) that the gate does not recognise, and aggregates the served outputs over K crops per text.
This probe trains (or reuses) the development seed's target, scores K crops per evaluation text
in-process, replays the served step on them (:func:`veil.python_backend.offline.defend`, the
served bytes) at threat 0 (the floor, what the fixed-intensity variant serves), 0.5 and 1, and
runs the augmentation attacks under the upper-bound attacker (5 halvings). Development seed
only: nothing here is reported as a result of a report seed.

    python -m veil.privacy.probe_crops --dataset sst2 --out build/privacy/probe_crops_sst2.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from veil.export.build_dir import BuildDir
from veil.export.data import dedupe, load_dataset
from veil.privacy.attacks import Outputs
from veil.privacy.baselines import label_only
from veil.privacy.metrics import cross_fitted
from veil.privacy.models import EvalConfig, attacker_pool, build_target, splits_for_seed
from veil.privacy.query_attacks import augmentation_features, augmentation_suite, expand
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.offline import defend
from veil.python_backend.probabilities import softmax64
from veil.python_backend.tokens import text_signatures

KINDS = (("edit", None), ("subset", 0.7), ("subset", 0.5), ("window", 0.5), ("subset", 0.3))


def crops(text: str, k: int, keep: float, kind: str) -> list[str]:
    """``k`` seeded crops keeping ``keep`` of the words: a random subset in order, or a window."""
    h = int.from_bytes(hashlib.sha256(f"{kind}{keep}:{text}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(h)
    words = text.split()
    n = len(words)
    m = max(1, round(keep * n))
    out = []
    for _ in range(k):
        if kind == "subset":
            out.append(" ".join(words[i] for i in np.sort(rng.choice(n, m, replace=False))))
        else:
            s = int(rng.integers(0, n - m + 1))
            out.append(" ".join(words[s : s + m]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--rows", type=int, default=300, help="rows per side")
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from veil.export.train import predict_logits

    cfg = EvalConfig(dataset=args.dataset, references=4, dp_epsilons=(), variants=("veil", "label_only"))
    ds = dedupe(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir))
    seed = cfg.dev_seed
    splits = splits_for_seed(cfg, ds, attacker_pool(ds, cfg.pool), seed)
    target = cfg.root / "dev" / f"seed{seed}" / "target"
    build_target(cfg, splits, seed, target)
    members, nonmembers = splits.take(ds, "member_eval"), splits.take(ds, "nonmember_eval")
    rng = np.random.default_rng(0)
    mi = rng.choice(len(members), args.rows, replace=False)
    ni = rng.choice(len(nonmembers), args.rows, replace=False)
    texts = [members.texts[i] for i in mi] + [nonmembers.texts[i] for i in ni]
    labels = np.r_[members.labels[mi], nonmembers.labels[ni]]
    member = np.r_[np.ones(args.rows, bool), np.zeros(args.rows, bool)]

    build = BuildDir(target)
    opts = build.options()
    artifact = DefenseArtifact.load(build.defense)
    index, gate_from = artifact.member_index(), artifact.selective.gate[0]
    tok = AutoTokenizer.from_pretrained(build.hf)
    model = AutoModelForSequenceClassification.from_pretrained(build.hf).eval()

    def attack(probs: np.ndarray, k: int) -> dict[str, float]:
        o = Outputs(probs, labels, augmentation_features(probs, labels, k))
        return {
            name: round(100 * cross_fitted(name, fit, o, member, seed=seed, boots=20, splits=5).accuracy, 1)
            for name, fit in augmentation_suite(seed).items()
        }

    results = {}
    for kind, keep in KINDS:
        if kind == "edit":
            k, flat = 6, expand(texts, 6, seed)[0]
        else:
            k, flat = args.crops, [c for t in texts for c in crops(t, args.crops, keep, kind)]
        z = np.asarray(predict_logits(model, tok, flat, max_length=cfg.max_length), np.float64)
        sig = text_signatures(build.hf, list(opts.input_names), flat, max_length=opts.max_length)
        gated = (index.nearest(sig)[0] > gate_from).reshape(len(texts), k)
        raw = softmax64(z)
        row: dict = {"raw": attack(raw, k), "label_only": attack(label_only(raw), k)}
        for t in (0.0, 0.5, 1.0):
            row[f"veil_threat_{t:g}"] = attack(defend(target, flat, z, threat=t), k)
        row["gated_share"] = {"members": float(gated[member].mean()), "nonmembers": float(gated[~member].mean())}
        best_lo = max(row["label_only"].values())
        row["excess_over_label_only"] = {
            name: round(max(v.values()) - best_lo, 1) for name, v in row.items() if name not in ("gated_share",)
        }
        results[f"{kind}{'' if keep is None else f'_{keep:g}'}"] = row
        print(kind, keep, json.dumps(row["excess_over_label_only"]), json.dumps(row["gated_share"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
