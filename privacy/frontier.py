"""The privacy-utility frontier: every defense (knob sweeps included) as a point of excess over
label-only (strongest attack, upper-bound attacker) against error-detection AUROC and against ECE;
Pareto-optimal points marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from veil.privacy.summary import mean

PANELS = (("error_detection_auroc", "error-detection AUROC (higher is better)", True), ("ece", "ECE (lower)", False))


def points(summary: dict) -> list[dict]:
    out = []
    for name, r in summary.items():
        excess = mean(r["upper_bound"]["excess"])
        if excess is None:
            continue
        out.append(
            {
                "name": name,
                "family": r["family"],
                "knob": r["knob"],
                "excess": excess,
                "error_detection_auroc": mean(r["utility"]["error_detection_auroc"]),
                "ece": mean(r["utility"]["ece"]),
                "accuracy": mean(r["model_accuracy"]),
            }
        )
    return out


ACCURACY_SLACK = 0.01
"""Points more than 1 pt below the best accuracy are plotted but cannot be Pareto-optimal (a model
that stopped classifying is not a privacy-utility trade-off of the served scores)."""


def pareto(pts: list[dict], key: str, higher_better: bool) -> set[str]:
    """Names of points no other point beats on both (lower excess, better ``key``), among points
    whose accuracy is within :data:`ACCURACY_SLACK` of the best."""
    sign = 1 if higher_better else -1
    top = max((p.get("accuracy", 1.0) for p in pts), default=1.0)
    pts = [p for p in pts if p.get("accuracy", 1.0) >= top - ACCURACY_SLACK]
    best = set()
    for p in pts:
        dominated = any(
            q is not p
            and q["excess"] <= p["excess"]
            and sign * q[key] >= sign * p[key]
            and (q["excess"] < p["excess"] or sign * q[key] > sign * p[key])
            for q in pts
        )
        if not dominated:
            best.add(p["name"])
    return best


def plot(summary: dict, out_dir: Path, dataset: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(summary)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    families = sorted({p["family"] for p in pts})
    colors = dict(zip(families, plt.cm.tab20(np.linspace(0, 1, max(len(families), 2))), strict=False))
    for ax, (key, label, higher) in zip(axes, PANELS, strict=True):
        front = pareto(pts, key, higher)
        for fam in families:
            fp = sorted([p for p in pts if p["family"] == fam], key=lambda p: (p["knob"] is None, p["knob"] or 0))
            xs, ys = [100 * p["excess"] for p in fp], [p[key] for p in fp]
            ax.plot(xs, ys, "o-" if len(fp) > 1 else "o", color=colors[fam], label=fam, ms=5)
        for p in pts:
            if p["name"] in front:
                ax.plot(100 * p["excess"], p[key], "o", mfc="none", mec="k", ms=11)
                ax.annotate(
                    p["name"], (100 * p["excess"], p[key]), fontsize=6, xytext=(4, 4), textcoords="offset points"
                )
        ax.axvline(0, color="k", lw=0.7, ls=":")
        ax.set_xlabel("excess over label-only, strongest attack, upper-bound attacker (pt)")
        ax.set_ylabel(label)
        ax.set_title(f"{dataset}: privacy vs {key} (rings: Pareto-optimal)")
    axes[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = out_dir / f"frontier_{dataset}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(summary: dict) -> str:
    pts = sorted(points(summary), key=lambda p: p["excess"])
    front_a = pareto(pts, "error_detection_auroc", True)
    front_e = pareto(pts, "ece", False)
    lines = [
        "| Defense | Family | Knob | Excess over label-only (pt) | Error-det. AUROC | ECE | Accuracy |"
        " Pareto (AUROC / ECE) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in pts:
        knob = "" if p["knob"] is None else f"{p['knob']:g}"
        marks = f"{'yes' if p['name'] in front_a else '-'} / {'yes' if p['name'] in front_e else '-'}"
        lines.append(
            f"| {p['name']} | {p['family']} | {knob} | {100 * p['excess']:+.1f} | {p['error_detection_auroc']:.3f} |"
            f" {p['ece']:.3f} | {100 * p['accuracy']:.1f} | {marks} |"
        )
    return "\n".join(lines) + "\n"
