"""Markdown + JSON report and plots (ROC on log-log axes, the privacy-utility frontier).

Every privacy number is reported at both attacker strengths and as the *excess over the label-only
output* under the same attack set; the single-query floor 0.5 + (train acc - test acc)/2 sits
beside it for context. Every cell shows mean ± std over seeds followed by each seed's value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from veil.privacy import frontier, level_reading
from veil.privacy.metrics import REALISTIC, UPPER
from veil.privacy.summary import REFERENCE, fmt, mean, summarise

NAMES = {
    "none": "No defense (raw)",
    "veil": "Veil",
    "fixed_intensity": "Veil, fixed intensity",
    "perturb_all": "Veil, perturb all",
    "random_noise": "Random noise (served)",
    "temperature": "Temperature (served)",
    "memguard": "MemGuard-style",
    "label_only": "Top-1 label only (reference)",
}
UTILITY_COLS = (
    ("accuracy", "Acc", True),
    ("error_detection_auroc", "Err-det AUROC", False),
    ("aurc", "AURC", False),
    ("ece", "ECE", False),
    ("brier", "Brier", False),
    ("nll", "NLL", False),
    ("tv_to_raw", "TV to raw", False),
    ("identical_to_raw", "Identical to raw", True),
    ("distinct_outputs", "Distinct outputs", False),
    ("top2_accuracy", "Top-2 acc", True),
    ("rank_agreement", "Kendall tau vs raw", False),
)


def display(name: str) -> str:
    return NAMES.get(name, name)


def _order(summary: dict) -> list[str]:
    rank = {"served": 0, "offline": 1, "baseline": 2, "dp": 3}
    return sorted(summary, key=lambda n: (rank.get(summary[n]["source"], 9), n != "none", n))


def privacy_table(summary: dict) -> str:
    head = (
        "| Defense | Model acc | Floor (1 query) | Strongest attack, upper bound |"
        " Excess over label-only, upper bound | TPR@1%FPR, upper bound | Strongest attack, realistic |"
        " Excess over label-only, realistic | AUC, upper bound | Excess, attack chosen on the other half |"
    )
    lines = [head, "|" + "---|" * 10]
    for n in _order(summary):
        r = summary[n]
        ub, re = r[UPPER], r[REALISTIC]
        common = max(set(ub["attack"]), key=ub["attack"].count)
        common_r = max(set(re["attack"]), key=re["attack"].count)
        lines.append(
            f"| {display(n)} | {fmt(r['model_accuracy'])} | {fmt(r['floor'])} | {fmt(ub['accuracy'])} ({common}) |"
            f" **{fmt(ub['excess'])}** | {fmt(ub['tpr_1'])} | {fmt(re['accuracy'])} ({common_r}) |"
            f" {fmt(re['excess'])} | {fmt(ub['auc'])} | {fmt(ub.get('excess_selected', [None]))} |"
        )
    return "\n".join(lines) + "\n"


def interval_table(result: dict, summary: dict) -> str:
    seeds = [s["seed"] for s in result["seeds"]]
    lines = [
        "| Defense | Seed | Upper-bound acc [95% CI] | TPR@1%FPR [95% CI] |",
        "|---|---|---|---|",
    ]
    for n in _order(summary):
        if summary[n]["source"] not in ("served", "dp"):
            continue
        ub = summary[n][UPPER]
        for i, s in enumerate(seeds):
            a, ci, t, tci = ub["accuracy"][i], ub["accuracy_ci"][i], ub["tpr_1"][i], ub["tpr_1_ci"][i]
            tpr = f"{100 * t:.1f} [{100 * tci[0]:.1f}, {100 * tci[1]:.1f}]" if t is not None and tci else "n/a"
            lines.append(f"| {display(n)} | {s} | {100 * a:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}] | {tpr} |")
    return "\n".join(lines) + "\n"


def per_attack_table(summary: dict, strength: str, names: list[str]) -> str:
    names = [n for n in names if n in summary]
    attacks = [a for a in summary[REFERENCE][strength]["per_attack"] if "/" not in a or a.startswith("long_lived/full")]
    lines = [
        "| Attack | Label-only acc | " + " | ".join(f"{display(n)} excess" for n in names) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for a in attacks:
        cells = [fmt(summary[n][strength]["per_attack_excess"].get(a, [None])) for n in names]
        lines.append(f"| {a} | {fmt(summary[REFERENCE][strength]['per_attack'][a])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def query_table(summary: dict) -> str:
    modes = sorted({a.split(":")[0] for n in summary for a in summary[n][UPPER]["per_attack"] if ":" in a})
    served = [n for n in _order(summary) if any(":" in a for a in summary[n][UPPER]["per_attack"])]
    lines = [
        "| Defense | Mode/speed | Best query attack, upper bound | Excess over label-only | Non-deterministic rows |",
        "|---|---|---|---|---|",
    ]
    for n in served:
        r = summary[n][UPPER]
        for m in modes:
            keys = [a for a in r["per_attack"] if a.startswith(m + ":")]
            if not keys:
                continue
            best = max(keys, key=lambda a: mean(r["per_attack"][a]) or 0)
            nd = [d.get(m) for d in summary[n]["nondeterministic"]]
            lines.append(
                f"| {display(n)} | {m} | {fmt(r['per_attack'][best])} ({best.split(':')[1]}) |"
                f" {fmt(r['per_attack_excess'].get(best, [None]))} | {', '.join(str(x) for x in nd)} |"
            )
    return "\n".join(lines) + "\n"


def utility_table(summary: dict) -> str:
    cols = [c for c in UTILITY_COLS if any(summary[n]["utility"].get(c[0]) for n in summary)]
    lines = ["| Defense | " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * (1 + len(cols))]
    rows = [(n, summary[n]["utility"], display(n)) for n in _order(summary)]
    rows += [
        (n, summary[n]["utility_benign"], f"{display(n)}, benign traffic")
        for n in summary
        if "utility_benign" in summary[n]
    ]
    for _, u, label in rows:
        cells = []
        for key, _, pct in cols:
            v = u.get(key, [None])
            cells.append(fmt(v, pct=pct) if key != "distinct_outputs" else fmt(v, pct=False, digits=0))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HEADLINE = (
    ("none", "utility"),
    (REFERENCE, "utility"),
    ("veil", "utility_benign"),
    ("veil", "utility"),
    ("fixed_intensity", "utility"),
    ("clamp_0.9", "utility"),
    ("calibrated_label_only", "utility"),
    ("noise_1", "utility"),
    ("round_1dp", "utility"),
    ("dpsgd_eps8", "utility"),
)
"""The headline rows: (defense, which traffic its utility is read on)."""


def _halvings(seeds: list[dict]) -> str:
    """How many random halvings the seeds' upper-bound attackers averaged (results written before
    the count was recorded used one)."""
    n = sorted({s.get("crossfit_splits", 1) for s in seeds})
    return " / ".join(map(str, n)) + (" halving" if n == [1] else " halvings")


def headline_table(summary: dict) -> str:
    """Privacy and utility side by side, per seed: excess over label-only (upper bound: strongest
    attack, and chosen on the other half; realistic), TPR@1%FPR over label-only's, and utility on
    held-out rows. Veil appears twice: its utility for benign traffic and for the evaluation burst
    (one id, full speed, which adaptive intensity coarsens); its privacy is read on the burst."""
    ref = summary.get(REFERENCE)
    if ref is None:
        return ""
    top2 = any(summary[n]["utility"].get("top2_accuracy") for n in summary)
    head = (
        "| Output | Excess, strongest attack (pt) | Excess, chosen on other half | Excess, realistic |"
        " TPR@1%FPR minus label-only's | Err-det AUROC | ECE | Brier |" + (" Top-2 acc |" if top2 else "")
    )
    lines = [head, "|" + "---|" * (8 + top2)]
    minus = lambda a, b: [None if x is None or y is None else x - y for x, y in zip(a, b, strict=True)]  # noqa: E731
    for name, traffic in HEADLINE:
        r = summary.get(name)
        if r is None or traffic not in r:
            continue
        u, ub = r[traffic], r[UPPER]
        label = display(name) + (", benign traffic" if traffic == "utility_benign" else "")
        label += ", evaluation burst" if name == "veil" and traffic == "utility" else ""
        privacy = [
            fmt(ub["excess"]),
            fmt(ub.get("excess_selected", [None])),
            fmt(r[REALISTIC]["excess"]),
            fmt(minus(ub["tpr_1"], ref[UPPER]["tpr_1"])),
        ]
        cells = [
            *(["(as the burst)", "", "", ""] if traffic == "utility_benign" else privacy),
            fmt(u["error_detection_auroc"], pct=False),
            fmt(u["ece"], pct=False),
            fmt(u["brier"], pct=False),
        ]
        if top2:
            cells.append(fmt(u.get("top2_accuracy", [None])))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def raw_vs_label_only(summary: dict) -> str:
    """What the raw output leaks beyond the label, under the upper-bound attacker."""
    if "none" not in summary or REFERENCE not in summary:
        return ""
    raw, ref = summary["none"][UPPER], summary[REFERENCE][UPPER]

    def diff(key: str, attack: str) -> list[float | None]:
        return [
            None if a is None or b is None else a - b for a, b in zip(raw[key][attack], ref[key][attack], strict=True)
        ]

    return (
        f"Raw output vs label-only, upper bound: strongest attack {fmt(raw['excess'])} pt;"
        f" label-free confidence attack accuracy {fmt(diff('per_attack', 'confidence'))} pt;"
        f" loss-score AUC {fmt(diff('per_attack_auc', 'loss'))} pt;"
        f" loss-score TPR@1%FPR {fmt(diff('per_attack_tpr_1', 'loss'))} pt."
    )


def timing_table(result: dict) -> str:
    """Per served model and seed: the latency attack's AUC (one request; each text's median over its
    repeats) and the two sides' median latency. ``veil_raw`` is the reference: text length alone
    moves it off 0.5."""
    seeds = [s for s in result["seeds"] if s.get("timing")]
    if not seeds:
        return "Not measured in this run.\n"
    lines = [
        "| served | "
        + " | ".join(f"seed {s['seed']}: AUC, median-of-k AUC, p50 ms members / non-members" for s in seeds)
        + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for name in seeds[0]["timing"]:
        cells = []
        for s in seeds:
            t = s["timing"].get(name)
            if t is None:
                cells.append("-")
                continue
            repeated = f"{t['median_of_repeats_auc']:.3f} (k={t['repeats']})" if "repeats" in t else "-"
            cells.append(f"{t['latency_auc']:.3f}, {repeated}, {t['member_p50_ms']:.2f} / {t['nonmember_p50_ms']:.2f}")
        lines.append(f"| {display(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def level_table(result: dict) -> str:
    readings = {s["seed"]: s["level_reading"] for s in result["seeds"] if s.get("level_reading")}
    return level_reading.table(readings) if readings else "Not measured in this run (no adaptive variant served).\n"


def findings(summary: dict) -> list[str]:
    out = [raw_vs_label_only(summary)] if "none" in summary and REFERENCE in summary else []
    for n in _order(summary):
        r = summary[n]
        per_mode: dict[str, list[int]] = {}
        for d in r["nondeterministic"]:  # one dict a seed
            for m, k in d.items():
                per_mode.setdefault(m, []).append(k)
        for m, ks in per_mode.items():
            if any(ks):
                counts = " / ".join(str(k) for k in ks)
                what = f"rows answered differently on identical repeated queries ({m}), per seed"
                out.append(f"{display(n)}: {what}: {counts}.")
        e = mean(r[UPPER]["excess"])
        if e is not None and e > 0.01 and n != "none":
            worst = max(x for x in r[UPPER]["excess"] if x is not None)
            out.append(
                f"{display(n)}: {100 * e:+.1f} pt over label-only (worst seed {100 * worst:+.1f} pt), upper bound."
            )
    return out


def roc_plot(result: dict, out_dir: Path, dataset: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from veil.privacy.metrics import roc

    seed = result["seeds"][0]
    member = np.asarray(seed["is_member"], bool)
    fig, ax = plt.subplots(figsize=(6, 5))
    for name, scores in seed["roc"].items():
        fpr, tpr = roc(np.asarray(scores["loss"]), member)
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=display(name), lw=1)
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="FPR", ylabel="TPR")
    ax.set_title(f"{dataset}: loss score (not fitted), seed {seed['seed']}; ties interpolated")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = out_dir / f"roc_{dataset}_log.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(results: dict[str, dict], out_dir: str | Path, *, command: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Privacy evaluation", "", f"Produced by `{command}`. Protocol: docs/evaluation-instrument.md.", ""]
    summaries = {}
    for key, result in results.items():
        dataset = result.get("name", key)
        summary = summaries[dataset] = summarise(result)
        cfg, seeds = result["config"], result["seeds"]
        timing = f"{result['seconds'] / 60:.1f} min" if result.get("seconds") is not None else "re-rendered"
        served = [n for n in _order(summary) if summary[n]["source"] in ("served", "dp")]
        parts += [
            f"## {dataset} ({cfg['model']})",
            "",
            f"Report seeds {cfg['seeds']}; development seed {cfg['dev_seed']} (never reported). "
            f"{cfg['members'] // 2} members and {cfg['nonmembers'] // 2} non-members attacked per seed; "
            f"{cfg['pool']}-row attacker pool, {cfg['references']} reference models; query attacks on "
            f"{cfg['query_rows']}+{cfg['query_rows']} rows x {cfg['edits']} edits and {cfg['repeats']} repeats; "
            f"upper-bound attacker cross-fitted over {_halvings(seeds)} (averaged). "
            f"Target train accuracy {fmt([s['train_accuracy'] for s in seeds])}%. Wall time: {timing}.",
            "",
            f"DP-SGD learning rate per epsilon, tuned on the development seed's calibration non-members "
            f"(grid {cfg.get('dp_lr_grid')}): {result.get('dp_lr', {})}.",
            "",
            "Baselines are exact deterministic functions of the raw served output (`veil_raw`); the attacker "
            "applies the same function to its shadow/reference outputs. Paced querying is emulated (many warmed-up "
            "long-lived ids, slow id creation, small round-robin requests), not real-time pacing.",
            "",
            "### Headline: privacy and utility side by side (mean ± std, then each seed)",
            "",
            "Excess over the label-only output under the same attacks, in percentage points (upper-bound "
            "attacker unless marked realistic); utility on held-out rows. Veil's benign-traffic row: the same "
            "distinct rows sent paced, where adaptive intensity stays idle.",
            "",
            headline_table(summary),
            "### Privacy: excess over the label-only output (percentage points; strongest attack)",
            "",
            "The strongest attack is the best of about 20 per-attack estimates, which biases it upwards, for "
            "label-only too. The last column chooses it on one cross-fitted half and reports it on the other "
            "(both directions of every halving averaged): an unbiased pick.",
            "",
            privacy_table(summary),
            "### Bootstrap intervals (per seed)",
            "",
            interval_table(result, summary),
            "### Same attack, excess over label-only (upper bound)",
            "",
            per_attack_table(summary, UPPER, served),
            "### Same attack, excess over label-only (realistic)",
            "",
            per_attack_table(summary, REALISTIC, served),
            "### Query attacks by client-id mode and speed (upper bound)",
            "",
            query_table(summary),
            "### Utility on held-out rows",
            "",
            'Rows queried once each by one long-lived id at full speed (the evaluation query); "benign traffic" '
            "rows: the same distinct rows sent paced (emulated), where adaptive intensity should stay idle.",
            "",
            utility_table(summary),
            "### Timing: latency as a membership score",
            "",
            "One gRPC client, one row a request, training texts and non-members interleaved with the order "
            "balanced, each text sent to every served model in turn (`veil.loadtest.timing.latency_attack`). "
            "AUC 0.5: latency says nothing; compare with `veil_raw` (the same texts without the defense).",
            "",
            timing_table(result),
            "### Reading one's own level",
            "",
            "The adaptive level depends on the caller's query pattern only; independent of membership, it "
            "adds nothing an attack could read beyond the floor's output. Per seed: the burst's rows served "
            "coarser than the same rows sent paced (`veil.privacy.level_reading`).",
            "",
            level_table(result),
            "### Privacy-utility frontier",
            "",
            frontier.table(summary),
            f"![frontier]({frontier.plot(summary, out_dir, dataset).name})",
            f"![roc]({roc_plot(result, out_dir, dataset).name})",
            "",
            "### Findings",
            "",
            *[f"- {f}" for f in findings(summary) or ["none above 1 pt"]],
            f"- Blind (text-only) attack, upper bound: {fmt(summary['none']['blind_accuracy'])}% (should be ~50%).",
            "",
        ]
    (out_dir / "privacy.md").write_text("\n".join(parts))
    slim = {
        r.get("name", d): {k: v for k, v in r.items() if k != "seeds"} | {"summary": summaries[r.get("name", d)]}
        for d, r in results.items()
    }
    (out_dir / "privacy.json").write_text(json.dumps(slim, indent=1, default=str))
    return out_dir / "privacy.md"
