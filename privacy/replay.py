"""``python -m veil.privacy.replay``: the defense and every output baseline on built targets, fast.

    python -m veil.privacy.replay --builds build/fresh/sst2-s201,build/fresh/sst2-s202 --out reports/defense

For each build (one target per seed, from ``veil-build``): the classifier's logits and the
tokenizer's signatures on the evaluation rows (``member_eval`` + ``nonmember_eval``), then every
output a defense would serve for them, replayed in-process with the served code
(:func:`veil.python_backend.offline.defend`; ``tests/integration/test_server.py`` checks that the
replay returns the served bytes), and the raw-output baselines of :mod:`baselines`. Each output is
attacked by the evaluation's single-query suite at the *upper-bound* strength (cross-fitted on
halves of the true membership) and measured for utility on the held-out rows. Reported: per seed
and mean, the strongest attack's excess over the label-only output under the same suite, TPR at
1% FPR, and utility; a frontier plot (excess against error-detection AUROC).

What this does not do, and ``python -m veil.privacy`` does: the realistic attacker (shadow and
reference models), LiRA, query-based attacks through the server under client-id modes, DP-SGD.
It measures the benign operating point: no threat from the caller's query pattern.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veil.export.build_dir import BuildDir
from veil.privacy.attacks import NOT_SCORE_BASED, Outputs, suite
from veil.privacy.baselines import baselines, label_only
from veil.privacy.metrics import cross_fitted, excess
from veil.privacy.utility import utility
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.probabilities import softmax

LEVELS = (0.0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1.0)
"""Veil's intensity levels swept (64, 32, ..., 1 confidence levels per class)."""
BOOTSTRAP = 100


def inputs(build: BuildDir) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Evaluation texts, labels, membership and the served classifier's logits (cached)."""
    from veil.export.pipeline import onnx_logits

    texts, labels = build.labelled("member_eval", "nonmember_eval")
    is_member = np.r_[np.ones(len(build.splits().indices["member_eval"]), bool)]
    is_member = np.r_[is_member, np.zeros(len(texts) - len(is_member), bool)]
    cache = build.report("replay_logits.npy")
    if cache.exists():
        logits = np.load(cache)
    else:
        opts = build.options()
        logits = onnx_logits(build.onnx, build.hf, list(opts.input_names), texts, max_length=opts.max_length)
        np.save(cache, logits)
    return texts, labels, is_member, logits


def outputs(build: BuildDir, texts: list[str], logits: np.ndarray) -> dict[str, tuple[str, float | None, np.ndarray]]:
    """name -> (family, knob, served probabilities) for every defense and baseline."""
    from veil.python_backend.offline import defend

    raw = softmax(logits)
    art = DefenseArtifact.load(build.defense)
    out: dict[str, tuple[str, float | None, np.ndarray]] = {
        "none": ("none", None, raw),
        "label_only": ("label_only", None, label_only(raw)),
        "veil": ("veil", None, defend(build.root, texts, logits)),
    }
    for q in LEVELS:
        out[f"veil_level_{q:.2f}"] = ("veil_level", q, defend(build.root, texts, logits, knob=q))
    out["levelset"] = ("levelset", None, Defense(art, config=DefenseConfig(variant="levelset"))(logits).probabilities)
    # The calibrated label-only baseline's precision: the defender's calibration non-members.
    tables = art.selective
    precision = np.array([np.mean(c) if len(c) else 1.0 / art.num_classes for c in tables.nonmember_correct])
    for b in baselines(art.num_classes, precision):
        out[b.name] = (b.family, b.knob, b.transform(raw))
    return out


def measure(probs: np.ndarray, labels: np.ndarray, is_member: np.ndarray, raw: np.ndarray, seed: int) -> dict:
    o = Outputs(probs, labels)
    attacks = {
        name: cross_fitted(name, fit, o, is_member, seed=seed, boots=BOOTSTRAP).row()
        for name, fit in suite(lira=False, blind=False, seed=seed).items()
    }
    scored = {k: v for k, v in attacks.items() if k not in NOT_SCORE_BASED}
    strongest = max(scored, key=lambda k: scored[k]["accuracy"])
    held = ~is_member
    return {
        "attacks": attacks,
        "strongest": strongest,
        "strongest_accuracy": scored[strongest]["accuracy"],
        "tpr_1": max((v["tpr_1"] or 0.0) for v in scored.values()),
        "utility": utility(probs[held], labels[held], raw[held]),
    }


def replay(build_dir: str | Path, *, seed: int = 0) -> dict:
    build = BuildDir(build_dir)
    t0 = time.perf_counter()
    texts, labels, is_member, logits = inputs(build)
    raw = softmax(logits)
    rows = {}
    for name, (family, knob, probs) in outputs(build, texts, logits).items():
        rows[name] = {"family": family, "knob": knob, **measure(probs, labels, is_member, raw, seed)}
        print(f"  {build.root.name}: {name:28s} strongest {rows[name]['strongest_accuracy']:.3f}", flush=True)
    ref = rows["label_only"]
    for r in rows.values():
        r["excess"] = excess(r["strongest_accuracy"], ref["strongest_accuracy"])
        r["tpr_1_excess"] = excess(r["tpr_1"], ref["tpr_1"])
    summary = build.summary()
    return {
        "build": str(build.root),
        "seed": summary["config"]["seed"],
        "dataset": summary["config"]["dataset"],
        "train_accuracy": summary["train"]["train_accuracy"],
        "selective": {k: v for k, v in DefenseArtifact.load(build.defense).selective.metrics.items() if k != "sweep"},
        "rows": {"members": int(is_member.sum()), "nonmembers": int((~is_member).sum())},
        "defenses": rows,
        "seconds": time.perf_counter() - t0,
    }


def _cell(values: list[float], fmt: str, scale: float = 100.0) -> str:
    v = np.array(values, dtype=np.float64) * scale
    per = " / ".join(format(x, fmt) for x in v)
    return f"{v.mean():{fmt}} ± {v.std():{fmt}} ({per})" if len(v) > 1 else format(v[0], fmt)


def _ranking(u: list[dict]) -> str:
    top2 = _cell([x["top2_accuracy"] for x in u], ".3f", 1)
    return f" {top2} | {_cell([x['rank_agreement'] for x in u], '.3f', 1)} |"


def to_markdown(results: list[dict], command: str) -> str:
    seeds = [r["seed"] for r in results]
    multi = "top2_accuracy" in results[0]["defenses"]["none"]["utility"]
    lines = [
        f"# Defense replay: {results[0]['dataset']}, seeds {', '.join(map(str, seeds))}",
        "",
        f"Command: `{command}`. Upper-bound attacker (cross-fitted on halves of the true membership),",
        "single-query suite (loss, confidence, class-wise loss / entropy / modified entropy, neural,",
        "exact-float gradient-boosted trees); utility on held-out rows at the benign operating point.",
        "Each cell: mean ± std over seeds, then each seed in order. Excess = strongest attack minus the",
        "strongest attack on the label-only output of the same rows (points).",
        "",
        "| defense | strongest attack (%) | excess over label-only (pt) | TPR@1%FPR excess (pt) |"
        " error-detection AUROC | ECE | Brier | distinct outputs |"
        + (" top-2 accuracy | rank agreement |" if multi else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if multi else ""),
    ]
    names = list(results[0]["defenses"])
    for name in names:
        rs = [r["defenses"][name] for r in results]
        u = [r["utility"] for r in rs]
        lines.append(
            f"| {name} | {_cell([r['strongest_accuracy'] for r in rs], '.1f')} |"
            f" {_cell([r['excess'] for r in rs], '+.2f')} | {_cell([r['tpr_1_excess'] for r in rs], '+.2f')} |"
            f" {_cell([x['error_detection_auroc'] for x in u], '.3f', 1)} | {_cell([x['ece'] for x in u], '.3f', 1)} |"
            f" {_cell([x['brier'] for x in u], '.3f', 1)} | {_cell([x['distinct_outputs'] for x in u], '.0f', 1)} |"
            + (_ranking(u) if multi else "")
        )
    lines += ["", "Per seed: train accuracy, the calibrated intensity floor and its rule."]
    for r in results:
        s = r["selective"]
        lines.append(
            f"- seed {r['seed']}: train accuracy {100 * r['train_accuracy']:.1f}%, floor {s['floor']:.3f}"
            f" ({s['levels']} levels; {s['rule']}; met {s['slack_met']}); {r['rows']['members']} members +"
            f" {r['rows']['nonmembers']} non-members attacked; {r['seconds']:.0f} s"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    names = list(results[0]["defenses"])
    families: dict[str, list[tuple[float, float, str]]] = {}
    for name in names:
        rs = [r["defenses"][name] for r in results]
        x = float(np.mean([r["utility"]["error_detection_auroc"] for r in rs]))
        y = float(np.mean([100 * r["excess"] for r in rs]))
        families.setdefault(rs[0]["family"], []).append((x, y, name))
    for family, pts in families.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "o", label=family, ms=5)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.5, color="red", lw=0.8, ls=":", label="target: +0.5 pt")
    ax.axvline(0.65, color="green", lw=0.8, ls=":", label="target: AUROC 0.65")
    ax.set_xlabel("error-detection AUROC of the top probability (held-out rows; higher is more useful)")
    ax.set_ylabel("strongest attack minus label-only (pt, upper-bound attacker)")
    ax.set_title(f"{results[0]['dataset']}: privacy against utility, mean of {len(results)} seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--builds", required=True, help="comma-separated veil-build folders, one per seed")
    p.add_argument("--out", default="reports/defense")
    a = p.parse_args(argv)
    command = "python -m veil.privacy.replay " + " ".join(argv if argv is not None else sys.argv[1:])
    results = [replay(b.strip()) for b in a.builds.split(",") if b.strip()]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = str(results[0]["dataset"])
    path_like = "/" in dataset or "." in dataset  # a file or hub id: its last part names the report
    name = Path(dataset.removeprefix("hf:")).stem if path_like else dataset
    (out / f"replay_{name}.json").write_text(json.dumps(results, indent=2, default=float))
    md = to_markdown(results, command)
    (out / f"replay_{name}.md").write_text(md)
    plot(results, out / f"frontier_{name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
