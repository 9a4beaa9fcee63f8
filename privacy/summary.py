"""Per-defense numbers over seeds: strongest attack per attacker strength, excess over label-only
under the same attack set, utility. Lists keep one value per seed (so the worst seed is visible)."""

from __future__ import annotations

import numpy as np

from veil.privacy.attacks import NOT_SCORE_BASED
from veil.privacy.metrics import STRENGTHS

REFERENCE = "label_only"
PER_ATTACK = ("per_attack_excess", "per_attack", "per_attack_auc", "per_attack_tpr_1")


def attack_rows(d: dict) -> dict[str, dict]:
    """attack key -> {strength: row}; query attacks keyed "mode/speed:name"."""
    out = {k: v for k, v in d["attacks"].items() if k not in NOT_SCORE_BASED}
    for mode, q in d.get("query", {}).items():
        out |= {f"{mode}:{k}": v for k, v in q["attacks"].items()}
    return out


def strongest(rows: dict[str, dict], strength: str, keys=None) -> tuple[str, dict]:
    keys = [k for k in (keys if keys is not None else rows) if k in rows]
    best = max(keys, key=lambda k: rows[k][strength]["accuracy"])
    return best, rows[best][strength]


def selected_strongest(rows: dict[str, dict], strength: str, keys) -> float | None:
    """The strongest attack chosen without looking at the rows it is reported on: chosen by its
    accuracy on one cross-fitted half, reported on the other half, both directions of every
    halving averaged. The maximum over ~20 estimates (:func:`strongest`) is biased upwards; this is
    not. None where the rows carry no per-half accuracies (older results, the realistic attacker)."""
    return selected({k: rows[k][strength].get("fold_accuracy", []) for k in keys if k in rows})


def selected(folds: dict[str, list[float]]) -> float | None:
    """Per attack, one value per cross-fitted half (halving pairs consecutive) -> each half's value
    of the attack that was best on the other half of its halving, averaged: the strongest attack
    chosen without looking at the rows it is reported on. None without attacks, with mixed or odd
    fold counts, or with a missing value."""
    sizes = {len(f) for f in folds.values()}
    if len(sizes) != 1 or (n := sizes.pop()) == 0 or n % 2:
        return None  # no attacks, mixed fold counts, no folds, or folds not in halving pairs
    if any(v is None for f in folds.values() for v in f):
        return None
    picks = []
    for chose_on in range(n):
        report_on = chose_on ^ 1  # the other half of the same halving
        best = max(folds, key=lambda k: folds[k][chose_on])
        picks.append(folds[best][report_on])
    return float(np.mean(picks))


def seed_summary(seed: dict) -> dict[str, dict]:
    """Per defense, one seed: headline numbers at both strengths, excess over label-only."""
    defenses = seed["defenses"]
    ref_rows = attack_rows(defenses[REFERENCE]) if REFERENCE in defenses else {}
    out = {}
    for name, d in defenses.items():
        rows = attack_rows(d)
        keys = [k for k in rows if k in ref_rows] or list(rows)
        s = {
            "family": d["family"],
            "knob": d["knob"],
            "source": d["source"],
            "model_accuracy": d["accuracy_heldout"],
            "floor": d["floor"],
            "gap_accuracy": d["attacks"]["gap"]["realistic"]["accuracy"],
            "blind_accuracy": d["attacks"].get("blind", {}).get("upper_bound", {}).get("accuracy"),
            "utility": d["utility"],
            "utility_benign": d.get("utility_benign"),
            "nondeterministic": {m: q["nondeterministic"] for m, q in d.get("query", {}).items()},
        }
        for st in STRENGTHS:
            attack, row = strongest(rows, st, keys)
            tpr_keys = [k for k in keys if rows[k][st]["tpr_1"] is not None]
            top_tpr = max(tpr_keys, key=lambda k: rows[k][st]["tpr_1"]) if tpr_keys else None
            s[st] = {
                "attack": attack,
                "accuracy": row["accuracy"],
                "accuracy_ci": row["accuracy_ci"],
                "auc": max(rows[k][st]["auc"] for k in keys),
                "tpr_1": max((rows[k][st]["tpr_1"] for k in tpr_keys), default=None),
                "tpr_1_ci": rows[top_tpr][st]["tpr_1_ci"] if top_tpr else None,
                "excess": row["accuracy"] - strongest(ref_rows, st, keys)[1]["accuracy"] if ref_rows else None,
                "excess_selected": _difference(
                    selected_strongest(rows, st, keys), selected_strongest(ref_rows, st, keys)
                ),
                "per_attack_excess": {
                    k: rows[k][st]["accuracy"] - ref_rows[k][st]["accuracy"] for k in keys if k in ref_rows
                },
                "per_attack": {k: rows[k][st]["accuracy"] for k in rows},
                "per_attack_auc": {k: rows[k][st]["auc"] for k in rows},
                "per_attack_tpr_1": {k: rows[k][st]["tpr_1"] for k in rows},
            }
        out[name] = s
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarise(result: dict) -> dict[str, dict]:
    """Per defense: lists over seeds (same order as ``result['seeds']``)."""
    per_seed = [seed_summary(s) for s in result["seeds"]]
    names = list(dict.fromkeys(n for s in per_seed for n in s))
    out: dict[str, dict] = {}
    for name in names:
        got = [s[name] for s in per_seed if name in s]
        first = got[0]
        r = {"family": first["family"], "knob": first["knob"], "source": first["source"]}
        for key in ("model_accuracy", "floor", "gap_accuracy", "blind_accuracy"):
            r[key] = [g[key] for g in got]
        r["utility"] = {k: [g["utility"].get(k) for g in got] for k in first["utility"]}
        if first.get("utility_benign"):
            r["utility_benign"] = {
                k: [(g["utility_benign"] or {}).get(k) for g in got] for k in first["utility_benign"]
            }
        r["nondeterministic"] = [g["nondeterministic"] for g in got]
        for st in STRENGTHS:
            r[st] = {k: [g[st][k] for g in got] for k in first[st] if not k.startswith("per_attack")}
            for k in PER_ATTACK:
                attacks = first[st][k]
                r[st][k] = {a: [g[st][k].get(a) for g in got] for a in attacks}
        out[name] = r
    return out


def mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def fmt(values, pct: bool = True, digits: int = 1) -> str:
    """mean ± std (seed values): the worst seed stays visible."""
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    scale = 100 if pct else 1
    f = f"{{:.{digits}f}}" if pct or digits == 0 else f"{{:.{max(digits, 3)}f}}"
    if len(v) == 1:
        return f.format(scale * v[0])
    a = np.asarray(v, float) * scale
    return f"{f.format(a.mean())} ± {f.format(a.std(ddof=1))} ({', '.join(f.format(x) for x in a)})"
