"""Development-seed probe: do gate-evading query attacks (crops of a text) leak through Veil, and
does adaptive intensity stop them where the fixed intensity cannot?

The member gate recognises a query whose token set is close to a training text's (estimated
Jaccard >= 0.5). An attacker who knows that sends *crops* (a random half or third of the words,
or a window) that the Jaccard gate does not recognise, and aggregates the served outputs over K
crops per text; the partial-match gate (a query's content words all in one training text, or
holding all of one) and its map are what answers them. Reported per kind: the share of queries
each gate moves (``gated_share``, ``partial_share``: the partial gate's rows the Jaccard gate
left), members against non-members. This probe trains (or reuses) the development seed's target, scores K crops per text
in-process and replays the served step on them (:func:`veil.python_backend.offline.defend`, the
served bytes): at threat 0 (the floor: what the fixed-intensity variant serves; also without the
member gate, to separate what the gate does from what the binning does), at threat 1, and
*adaptive*: the crops sent by one long-lived caller at a benign rate (2 rows/s, one row a request),
text after text or interleaved over 30 texts, through the served threat tracker
(:class:`~veil.python_backend.adaptive.ThreatTracker`), each row served at the threat it got.
The same caller sending each text once (benign traffic) is replayed too, with its utility.
Also *padding* (the whole text with as many unrelated words before or after it), and the floor
without the member gate. ``--kinds`` picks the query kinds. Augmentation attacks under the
upper-bound attacker (5 halvings): per output, each attack's accuracy and TPR at 1% FPR, the
excess of the best of each over label-only's, and the strongest attack's 95% interval (20
bootstrap draws; the seed-to-seed spread is wider). Members: training texts;
non-members: evaluation non-members, then rows outside every split. The design it judges was
chosen on the development seed (the default); ``--seed`` runs the same probe, unchanged, on a
report seed's target to report it.

    python -m veil.privacy.probe_crops --dataset sst2 --out build/privacy/probe_crops_sst2.json
    python -m veil.privacy.probe_crops --dataset sst2 --seed 11 --out build/privacy/probe_crops_sst2_seed11.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil.export.build_dir import BuildDir
from veil.export.crops import crops
from veil.export.data import Splits, TextDataset, dedupe, load_dataset
from veil.privacy.attacks import Outputs
from veil.privacy.baselines import label_only
from veil.privacy.metrics import AttackEval, cross_fitted
from veil.privacy.models import DEV_SEED, EvalConfig, attacker_pool, build_target, splits_for_seed
from veil.privacy.query_attacks import augmentation_features, augmentation_suite, expand
from veil.privacy.summary import selected
from veil.privacy.utility import ece, error_detection_auroc
from veil.python_backend import selective
from veil.python_backend.adaptive import AdaptiveConfig, ThreatTracker
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.fingerprint import without
from veil.python_backend.offline import defend
from veil.python_backend.probabilities import softmax64
from veil.python_backend.tokens import text_fingerprints, text_signatures

KINDS = (("edit", None), ("subset", 0.5), ("window", 0.5), ("subset", 0.3), ("pad", None))
"""Query kinds: word edits, crops (random subsets, windows) keeping a share of the words, and
padding (the whole text with as many unrelated words before or after it: Jaccard to the text
about 1/2, the text itself intact)."""
PADS = 6
PACE_S = 0.5
"""Seconds between the probing caller's rows: 2 rows/s, far below the rate threat's 20."""
INTERLEAVE = 30


def stream_order(n_texts: int, k: int, *, interleave: int, seed: int) -> np.ndarray:
    """Indices into the flat [text, query] array in the order one caller sends them: texts in a
    seeded order, each block of ``interleave`` texts round-robin (1 = text after text)."""
    texts = np.random.default_rng(seed).permutation(n_texts)
    order = []
    for b in range(0, n_texts, interleave):
        block = texts[b : b + interleave]
        order += [t * k + j for j in range(k) for t in block]
    return np.asarray(order)


def replay_threats(
    signatures: np.ndarray, order: np.ndarray, config: AdaptiveConfig | None = None, *, mask: np.ndarray | None = None
) -> np.ndarray:
    """Per flat row: the threat one long-lived caller gets sending the rows in ``order``, one a request
    (``config``: the served default if None; ``mask``: the artifact's ``tracker_mask()``, left out of
    what the tracker sees, as the served step does)."""
    signatures = without(signatures, mask)
    tracker = ThreatTracker(config=config or AdaptiveConfig(), clock=lambda: 0.0)
    threat = np.empty(len(order))
    for step, row in enumerate(order):
        threat[row] = tracker.observe("prober", np.zeros((1, 2)), signatures[row : row + 1], now=step * PACE_S)
    return threat


def pads(text: str, k: int, filler: list[str]) -> list[str]:
    """``k`` seeded paddings of ``text``: as many words drawn from ``filler`` as it has, after it
    (even j) or before it (odd j)."""
    h = int.from_bytes(hashlib.sha256(f"pad:{text}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(h)
    n = len(text.split())
    out = []
    for j in range(k):
        extra = " ".join(filler[i] for i in rng.integers(0, len(filler), n))
        out.append(f"{text} {extra}" if j % 2 == 0 else f"{extra} {text}")
    return out


def padding_filler(probe: Probe) -> list[str]:
    """Padding words: those of texts outside every split that are not queried as non-members."""
    return " ".join(probe.ds.texts[i] for i in np.setdiff1d(probe.outside, probe.nonmember_rows)[-3000:]).split()


def kind_name(kind: str, keep: float | None) -> str:
    return f"{kind}{'' if keep is None else f'_{keep:g}'}"


@dataclass
class Probe:
    """A target (trained or reused, recalibrated by the current code), the probe's rows on it, and
    what scores and attacks them: shared by this probe and :mod:`veil.privacy.tune_partial`."""

    ds: TextDataset
    splits: Splits
    seed: int
    target: Path
    texts: list[str]
    labels: np.ndarray
    member: np.ndarray
    nonmember_rows: np.ndarray
    outside: np.ndarray
    artifact: DefenseArtifact
    score: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
    """Texts -> (logits, served signatures)."""

    @classmethod
    def open(cls, dataset: str, *, seed: int, rows: int) -> Probe:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from veil.export.train import predict_logits

        # The variants of the report runs (docs/evaluation.md), so a report seed's target is rebuilt as it was.
        variants = ("veil", "fixed_intensity", "perturb_all", "memguard", "label_only")
        cfg = EvalConfig(dataset=dataset, references=4, dp_epsilons=(), variants=variants)
        ds = dedupe(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir))
        splits = splits_for_seed(cfg, ds, attacker_pool(ds, cfg.pool), seed)
        target = cfg.root / ("dev" if seed == cfg.dev_seed else "") / f"seed{seed}" / "target"
        build_target(cfg, splits, seed, target)
        used = np.concatenate([np.asarray(v, dtype=np.int64) for v in splits.indices.values()])
        outside = np.setdiff1d(np.arange(len(ds)), used)
        rng = np.random.default_rng(0)
        member_rows = rng.choice(splits.members, rows, replace=False)
        fresh = rng.permutation(outside)[: max(0, rows - len(splits.indices["nonmember_eval"]))]
        nonmember_rows = np.r_[np.asarray(splits.indices["nonmember_eval"], dtype=np.int64), fresh][:rows]
        picked = np.r_[member_rows, nonmember_rows]
        build = BuildDir(target)
        opts = build.options()
        tok = AutoTokenizer.from_pretrained(build.hf)
        model = AutoModelForSequenceClassification.from_pretrained(build.hf).eval()

        def score(flat: list[str]) -> tuple[np.ndarray, np.ndarray]:
            z = np.asarray(predict_logits(model, tok, flat, max_length=cfg.max_length), np.float64)
            return z, text_signatures(build.hf, list(opts.input_names), flat, max_length=opts.max_length)

        return cls(
            ds=ds,
            splits=splits,
            seed=seed,
            target=target,
            texts=[ds.texts[i] for i in picked],
            labels=ds.labels[picked],
            member=np.r_[np.ones(len(member_rows), bool), np.zeros(len(nonmember_rows), bool)],
            nonmember_rows=nonmember_rows,
            outside=outside,
            artifact=DefenseArtifact.load(build.defense),
            score=score,
        )

    def evaluate(self, probs: np.ndarray, k: int) -> dict[str, AttackEval]:
        """The augmentation attacks (upper-bound attacker, 5 halvings) on ``k`` outputs per text
        (``probs`` [texts * k, C], each text's rows consecutive); the learned attack's loss feature
        is each text's first query."""
        o = Outputs(probs[::k], self.labels, augmentation_features(probs, self.labels, k))
        return {
            name: cross_fitted(name, fit, o, self.member, seed=self.seed, boots=20, splits=5)
            for name, fit in augmentation_suite(self.seed).items()
        }

    def attack(self, probs: np.ndarray, k: int) -> dict[str, float]:
        """:meth:`evaluate`'s accuracy per attack, %."""
        return {name: round(100 * e.accuracy, 1) for name, e in self.evaluate(probs, k).items()}


def scored(probe: Probe, outputs: dict[str, np.ndarray], k: int) -> tuple[dict, dict, dict, dict]:
    """Per output: accuracy per attack, %; TPR at 1% FPR per attack, %; the strongest attack by
    accuracy and its 95% bootstrap interval, and the strongest by TPR at 1% FPR and its interval
    (1% of a few hundred non-members is a handful of rows: the interval says how coarse it is);
    and per output the strongest attack *selected* on the other half of each halving
    (:func:`veil.privacy.summary.selected`), by accuracy and by TPR at 1% FPR, %: the maximum over
    the attacks is biased upwards, most where the estimates are noisiest (TPR at 1% FPR)."""
    row, tpr, strongest, chosen = {}, {}, {}, {}
    for name, probs in outputs.items():
        evals = probe.evaluate(probs, k)
        row[name] = {a: round(100 * e.accuracy, 1) for a, e in evals.items()}
        tpr[name] = {a: round(100 * e.tpr_1, 1) for a, e in evals.items() if e.tpr_1 is not None}
        best = max(evals.values(), key=lambda e: e.accuracy)
        strongest[name] = {"attack": best.attack, "accuracy_ci": [round(100 * v, 1) for v in best.accuracy_ci]}
        at_1 = [e for e in evals.values() if e.tpr_1 is not None and e.tpr_1_ci is not None]
        if at_1:
            best = max(at_1, key=lambda e: e.tpr_1)
            strongest[name] |= {"tpr_attack": best.attack, "tpr_1_ci": [round(100 * v, 1) for v in best.tpr_1_ci]}
        chosen[name] = {}
        for metric in ("accuracy", "tpr_1"):
            value = selected({a: [f[metric] for f in e.folds] for a, e in evals.items()})
            chosen[name][metric] = None if value is None else round(100 * value, 1)
    return row, tpr, strongest, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--rows", type=int, default=1000, help="rows per side (at most the training set)")
    ap.add_argument("--crops", type=int, default=8)
    ap.add_argument("--seed", type=int, default=DEV_SEED, help="the development seed, or a report seed to report")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--kinds", default=",".join(kind_name(*k) for k in KINDS), help="comma-separated, of: %(default)s")
    args = ap.parse_args(argv)
    kinds = [k for k in KINDS if kind_name(*k) in args.kinds.split(",")]
    probe = Probe.open(args.dataset, seed=args.seed, rows=args.rows)
    texts, labels, member, seed, target = probe.texts, probe.labels, probe.member, probe.seed, probe.target
    artifact, score = probe.artifact, probe.score
    index = artifact.member_index()
    tables = artifact.selective
    build = BuildDir(target)
    opts = build.options()
    floor_bins = tables.bin_count(tables.level(None, adaptive=False))

    def bins(threat: np.ndarray) -> np.ndarray:
        """Confidence levels per class each row is served at (1 = calibrated label-only)."""
        return tables.bin_count(tables.level(threat, adaptive=True))

    # Benign traffic: the same caller sends each text once, in a seeded order.
    z, sig = score(texts)
    mask = artifact.tracker_mask()
    threat = replay_threats(sig, stream_order(len(texts), 1, interleave=1, seed=seed), mask=mask)
    held_out = ~member
    served = {"fixed": defend(target, texts, z, threat=0.0), "adaptive": defend(target, texts, z, threat=threat)}
    results: dict = {
        "rows": {"members": int(member.sum()), "nonmembers": int((~member).sum())},
        "benign": {
            "mean_threat": float(threat.mean()),
            "share_coarser_than_floor": float((bins(threat) < floor_bins).mean()),
            **{
                f"{name}_{metric}": round(fn(p[held_out], labels[held_out]), 3)
                for name, p in served.items()
                for metric, fn in (("auroc", error_detection_auroc), ("ece", ece))
            },
            "identical_bytes": bool(np.array_equal(served["fixed"], served["adaptive"])),
        },
    }
    print("benign", json.dumps(results["benign"]), flush=True)
    filler = padding_filler(probe)
    for kind, keep in kinds:
        if kind == "edit":
            k, flat = 6, expand(texts, 6, seed)[0]
        elif kind == "pad":
            k, flat = PADS, [c for t in texts for c in pads(t, PADS, filler)]
        else:
            k, flat = args.crops, [c for t in texts for c in crops(t, args.crops, keep, kind)]
        z, sig = score(flat)
        # Which gate moves each query, as the served step decides it.
        seq = text_fingerprints(build.hf, list(opts.input_names), flat, max_length=opts.max_length)[1]
        moves = selective.defend(z.astype(np.float32), tables, index=index, signatures=sig, sequences=seq, threat=None)
        gated = (moves.member_weight > 0).reshape(len(texts), k)
        near = moves.near.reshape(len(texts), k)
        partial = ((moves.partial_weight > 0) & (moves.member_weight == 0)).reshape(len(texts), k)
        raw = softmax64(z)
        outputs = {"raw": raw, "label_only": label_only(raw)}
        for t in (0.0, 1.0):
            outputs[f"veil_threat_{t:g}"] = defend(target, flat, z, threat=t)
        # The floor without the member gate (rows sent without a fingerprint): what the gate adds or removes.
        outputs["floor_ungated"] = defend(target, flat, z, threat=0.0, gated=False)
        threats = {}
        for name, inter in (("adaptive", 1), ("adaptive_interleaved", INTERLEAVE)):
            threats[name] = replay_threats(sig, stream_order(len(texts), k, interleave=inter, seed=seed), mask=mask)
            outputs[name] = defend(target, flat, z, threat=threats[name])
        row, tpr, strongest, chosen = scored(probe, outputs, k)
        threat_rows = {
            name: {
                "mean": round(float(t.mean()), 3),
                "coarser_than_floor": float((bins(t) < floor_bins).mean()),
                "label_only": float((bins(t) == 1).mean()),
            }
            for name, t in threats.items()
        }
        best_lo, best_lo_tpr = max(row["label_only"].values()), max(tpr["label_only"].values(), default=0.0)
        row["excess_over_label_only"] = {name: round(max(v.values()) - best_lo, 1) for name, v in row.items()}
        row["tpr_1"], row["strongest"] = tpr, strongest
        row["tpr_1_excess_over_label_only"] = {
            name: round(max(v.values(), default=0.0) - best_lo_tpr, 1) for name, v in tpr.items()
        }
        row["selected_excess_over_label_only"] = {
            metric: {
                name: None if v[metric] is None else round(v[metric] - chosen["label_only"][metric], 1)
                for name, v in chosen.items()
            }
            for metric in ("accuracy", "tpr_1")
            if chosen["label_only"][metric] is not None
        }
        row["gated_share"] = {"members": float(gated[member].mean()), "nonmembers": float(gated[~member].mean())}
        row["partial_share"] = {"members": float(partial[member].mean()), "nonmembers": float(partial[~member].mean())}
        row["near_share"] = {"members": float(near[member].mean()), "nonmembers": float(near[~member].mean())}
        row["threat"] = threat_rows
        results[kind_name(kind, keep)] = row
        print(
            kind,
            keep,
            json.dumps(row["excess_over_label_only"]),
            json.dumps(row["tpr_1_excess_over_label_only"]),
            json.dumps(row["selected_excess_over_label_only"]),
            json.dumps(row["gated_share"]),
            json.dumps(row["partial_share"]),
            json.dumps(row["near_share"]),
            json.dumps(row["threat"]),
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
