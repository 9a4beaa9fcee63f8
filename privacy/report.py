"""Tables (Markdown + JSON) and ROC plots (PNG) from privacy-evaluation results.

Laid out like the paper's main and ablation tables: Model Acc, MIA Attack Acc, Leakage, plus ROC
AUC, TPR at 1% and 0.1% FPR and the label-only floor, as mean ± std over seeds. "MIA Attack Acc"
is the strongest score-based attack's balanced accuracy at its best threshold on the target (an
upper bound on any threshold the attacker could pick); the shadow-fitted accuracy is in the
per-attack table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from veil.privacy.attacks import SCORE_BASED

MAIN_ROWS = ("none", "veil", "label_only", "memguard", "dpsgd_eps8", "dpsgd_eps1")
ABLATION_ROWS = ("veil", "fixed_intensity", "perturb_all", "random_noise", "temperature")
NAMES = {
    "none": "No defense",
    "veil": "Veil",
    "fixed_intensity": "Veil, fixed intensity",
    "perturb_all": "Veil, no risk evaluator (perturb all)",
    "random_noise": "Random noise (same mean size)",
    "temperature": "Temperature scaling only",
    "memguard": "MemGuard-style",
    "label_only": "Top-1 label only",
}


def display(name: str) -> str:
    if name.startswith("dpsgd_eps"):
        return f"DP-SGD, epsilon {name.removeprefix('dpsgd_eps')}"
    return NAMES.get(name, name)


def _ms(values: list[float], pct: bool = True) -> str:
    v = np.asarray(values, dtype=float)
    scale = 100 if pct else 1
    if len(v) == 1:
        return f"{scale * v[0]:.1f}" if pct else f"{v[0]:.3f}"
    return f"{scale * v.mean():.1f} ± {scale * v.std(ddof=1):.1f}" if pct else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def summarise(result: dict) -> dict:
    """Per defense: lists over seeds of the headline numbers."""
    out: dict[str, dict[str, list[float]]] = {}
    for seed in result["seeds"]:
        for name, d in seed["defenses"].items():
            attacks = d["attacks"]
            scored = {k: v for k, v in attacks.items() if k in SCORE_BASED}
            strongest = max(scored, key=lambda k: scored[k]["best_accuracy"])
            row = out.setdefault(name, {})
            for key, value in {
                "model_accuracy": d["accuracy_heldout"],
                "attack_accuracy": scored[strongest]["best_accuracy"],
                "leakage": 2 * (scored[strongest]["best_accuracy"] - 0.5),
                "auc": max(v["auc"] for v in scored.values()),
                "tpr_1": max(v["tpr_at_1pct_fpr"] for v in scored.values()),
                "tpr_01": max(v["tpr_at_0.1pct_fpr"] for v in scored.values()),
                "floor": d["floor"],
                "excess_over_floor": scored[strongest]["best_accuracy"] - d["floor"],
                "gap_accuracy": attacks["gap"]["accuracy"],
                "blind_accuracy": attacks.get("blind", {}).get("best_accuracy", float("nan")),
                "mean_confidence": d["mean_confidence"],
            }.items():
                row.setdefault(key, []).append(value)
            row.setdefault("strongest", []).append(strongest)
            for attack, v in attacks.items():
                for metric in ("accuracy", "best_accuracy", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
                    row.setdefault(f"{attack}:{metric}", []).append(v[metric])
    return out


def table(summary: dict, rows: tuple[str, ...], title: str) -> str:
    head = (
        "| Defense | Model Acc | MIA Attack Acc | Leakage | AUC | TPR@1%FPR | TPR@0.1%FPR | Label-only floor |"
        " Excess over floor | Strongest attack |"
    )
    lines = [f"**{title}** (mean ± std over seeds; percentages)", "", head, "|" + "---|" * 10]
    for name in rows:
        if name not in summary:
            continue
        r = summary[name]
        strongest = max(set(r["strongest"]), key=r["strongest"].count)
        lines.append(
            f"| {display(name)} | {_ms(r['model_accuracy'])} | {_ms(r['attack_accuracy'])} | {_ms(r['leakage'])} |"
            f" {_ms(r['auc'])} | {_ms(r['tpr_1'])} | {_ms(r['tpr_01'])} | {_ms(r['floor'])} |"
            f" {_ms(r['excess_over_floor'])} | {strongest} |"
        )
    return "\n".join(lines) + "\n"


def attack_table(summary: dict, name: str) -> str:
    attacks = sorted({k.split(":")[0] for k in summary[name] if ":" in k})
    lines = [
        f"**Every attack against {display(name)}**",
        "",
        "| Attack | Acc (shadow-fitted) | Acc (best threshold) | AUC | TPR@1%FPR | TPR@0.1%FPR |",
        "|---|---|---|---|---|---|",
    ]
    r = summary[name]
    for a in attacks:
        lines.append(
            f"| {a} | {_ms(r[f'{a}:accuracy'])} | {_ms(r[f'{a}:best_accuracy'])} | {_ms(r[f'{a}:auc'])} |"
            f" {_ms(r[f'{a}:tpr_at_1pct_fpr'])} | {_ms(r[f'{a}:tpr_at_0.1pct_fpr'])} |"
        )
    return "\n".join(lines) + "\n"


def slice_table(result: dict, name: str) -> str:
    d = result["seeds"][0]["defenses"][name]["slices"]
    attacks = [a for a in next(iter(d.values())) if a not in ("rows", "members")]
    lines = [
        f"**Slices, {display(name)}** (seed {result['seeds'][0]['seed']}; best-threshold accuracy, %)",
        "",
        "| Slice | Rows | Members | " + " | ".join(attacks) + " |",
        "|" + "---|" * (3 + len(attacks)),
    ]
    for s, v in d.items():
        lines.append(
            f"| {s} | {v['rows']} | {v['members']} | " + " | ".join(f"{100 * v[a]:.1f}" for a in attacks) + " |"
        )
    return "\n".join(lines) + "\n"


def targets(summary: dict) -> list[str]:
    """The issue's targets for Veil against no defense, checked with the measured numbers."""
    out = []
    if "veil" not in summary or "none" not in summary:
        return out
    v, n = summary["veil"], summary["none"]
    acc_change = 100 * (np.mean(v["model_accuracy"]) - np.mean(n["model_accuracy"]))
    out.append(f"{'MET' if abs(acc_change) < 1e-9 else 'MISSED'}: accuracy change {acc_change:+.2f} pt (target 0.0)")
    for attack in SCORE_BASED:
        key = f"{attack}:best_accuracy"
        if key not in v:
            continue
        excess = 100 * (np.mean(v[key]) - np.mean(v["floor"]))
        tpr = 100 * np.mean(v[f"{attack}:tpr_at_1pct_fpr"])
        out.append(
            f"{'MET' if excess <= 1.0 else 'MISSED'}: {attack} {100 * np.mean(v[key]):.1f}% = floor"
            f" {excess:+.1f} pt (target <= +1.0)"
        )
        out.append(f"{'MET' if tpr <= 2.0 else 'MISSED'}: {attack} TPR@1%FPR {tpr:.1f}% (target <= 2%)")
    for other in ("temperature", "random_noise"):
        if other in summary:
            a, b = np.mean(v["attack_accuracy"]), np.mean(summary[other]["attack_accuracy"])
            out.append(
                f"{'MET' if a < b else 'MISSED'}: Veil {100 * a:.1f}% vs {display(other)} {100 * b:.1f}%"
                " strongest attack at equal accuracy (target: Veil lower)"
            )
    return out


def roc_plots(result: dict, out_dir: Path, dataset: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    seed = result["seeds"][0]
    defenses = seed["defenses"]
    paths = []
    for log in (False, True):
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        for ax, attack in zip(axes, ("lira_offline", "classwise_confidence"), strict=True):
            for name, d in defenses.items():
                if attack not in d["scores"]:
                    continue
                fpr, tpr, _ = roc_curve(np.asarray(seed["is_member"]), d["scores"][attack])
                ax.plot(fpr, tpr, label=f"{display(name)} (AUC {d['attacks'][attack]['auc']:.3f})")
            if log:
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlim(1e-3, 1)
                ax.set_ylim(1e-3, 1)
            ax.plot([1e-3 if log else 0, 1], [1e-3 if log else 0, 1], "k:", lw=0.8)
            ax.set_title(f"{dataset}: {attack} (seed {seed['seed']})")
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = out_dir / f"roc_{dataset}{'_log' if log else ''}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(results: dict[str, dict], out_dir: str | Path, *, command: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Privacy evaluation", "", f"Produced by `{command}`.", ""]
    summaries = {}
    for dataset, result in results.items():
        dataset = result.get("name", dataset)
        summary = summarise(result)
        summaries[dataset] = summary
        cfg = result["config"]
        seeds = result["seeds"]
        timing = (
            f"{result['seconds'] / 60:.0f} min on this machine."
            if result.get("seconds") is not None
            else "re-rendered from saved per-seed results (wall time not recorded)."
        )
        parts += [
            f"## {dataset} ({cfg['model']})",
            "",
            f"{cfg['members']} members ({cfg['members'] // 2} attacked, {cfg['members'] // 2} for calibration), "
            f"{cfg['nonmembers']} non-members (likewise), {cfg['pool']}-row attacker pool, "
            f"{cfg['references']} reference models, {cfg['epochs']} epochs, seeds {cfg['seeds']}; "
            f"target train accuracy {_ms([s['train_accuracy'] for s in seeds])}%; {timing}",
            "",
            table(summary, MAIN_ROWS, "Main table"),
            table(summary, ABLATION_ROWS, "Ablations"),
            attack_table(summary, "none"),
            attack_table(summary, "veil"),
            slice_table(result, "veil"),
            "**Targets (Veil vs no defense)**",
            "",
            *[f"- {t}" for t in targets(summary)],
            "",
            f"Blind (text-only) attack: {_ms(summary['none']['blind_accuracy'])}% (should be near 50%).",
            "",
        ]
        for p in roc_plots(result, out_dir, dataset):
            parts.append(f"![{p.stem}]({p.name})")
        parts.append("")
    md = "\n".join(parts)
    (out_dir / "privacy.md").write_text(md)
    slim = {
        r.get("name", d): {k: v for k, v in r.items() if k != "seeds"} | {"summary": summaries[r.get("name", d)]}
        for d, r in results.items()
    }
    (out_dir / "privacy.json").write_text(json.dumps(slim, indent=1, default=str))
    return out_dir / "privacy.md"
