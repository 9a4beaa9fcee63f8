"""The load test's numbers: per-round results, percentiles, defended/reference ratios, server-time attribution.

Every comparison has the same shape: the defended ensemble against one reference, the undefended
baseline first (the goals are judged there), then ``veil_raw`` (same hops as the three-step
defended path, a python softmax in place of the defense).

Pure functions of what ``veil.loadtest.runner`` measured; nothing here imports gevent or Locust, so
tests (and anyone re-reading a saved ``report.json``) can use them without patching the process.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil.export.build_dir import BuildDir
from veil.loadtest.config import GOALS, KNEE_SHARE, RunConfig

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")  # Triton's per-request phases


@dataclass
class RoundResult:
    """One (protocol, users, model) round: in-window samples and the server's statistics delta."""

    protocol: str
    users: int
    model: str
    index: int
    seconds: float
    latencies_us: np.ndarray
    errors: int
    error_examples: list[str]
    locust_requests: int
    locust_failures: int
    stats: dict[str, dict[str, int]]
    client_cpu: float  # load generator CPU seconds per wall second
    server_cpu: float | None  # tritonserver + python stubs, CPU seconds per wall second


def stats_delta(before: dict, after: dict, models: Sequence[str]) -> dict[str, dict[str, int]]:
    """What one round added to Triton's cumulative counters (models that appear only later start at 0)."""
    return {m: {k: after[m][k] - before.get(m, {}).get(k, 0) for k in after[m]} for m in models if m in after}


def percentiles(us: np.ndarray) -> dict[str, float | None]:
    """Latency summary in milliseconds; all None for a round that finished nothing."""
    if len(us) == 0:
        return dict.fromkeys(("p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"))
    p50, p95, p99 = np.percentile(us, [50, 95, 99])
    return {
        "p50_ms": float(p50) / 1e3,
        "p95_ms": float(p95) / 1e3,
        "p99_ms": float(p99) / 1e3,
        "mean_ms": float(us.mean()) / 1e3,
        "min_ms": float(us.min()) / 1e3,
        "max_ms": float(us.max()) / 1e3,
    }


def server_split(stats: dict[str, dict[str, int]], ensemble: str, composing: Sequence[str]) -> dict:
    """Per-request microseconds of each composing model, and the ensemble's own server time."""

    def per_request(entry: dict[str, int], name: str) -> float | None:
        n = entry[f"{name}_count"]
        return entry[f"{name}_ns"] / n / 1e3 if n else None

    out: dict[str, Any] = {}
    e = stats.get(ensemble)
    if e:
        out["ensemble"] = {
            "requests": e["success_count"],
            "failures": e["fail_count"],
            "server_us": per_request(e, "success"),
        }
    models = {}
    for m in composing:
        s = stats.get(m)
        if not s:
            continue
        models[m] = {
            "requests": s["success_count"],
            "executions": s["executions"],
            "avg_batch": s["inferences"] / s["executions"] if s["executions"] else None,
            "total_us": per_request(s, "success"),
            **{f"{k}_us": per_request(s, k) for k in PHASES},
        }
    out["models"] = models
    return out


def summed(stat_list: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Counters of several rounds added up, so a level's split is over all its rounds."""
    total: dict[str, dict[str, int]] = {}
    for stats in stat_list:
        for m, entry in stats.items():
            acc = total.setdefault(m, dict.fromkeys(entry, 0))
            for k, v in entry.items():
                acc[k] += v
    return total


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero (a level without samples)."""
    return a / b if a is not None and b else None


def step_groups(composing: dict[str, list[str]], raw: str, defended: str) -> tuple[list[str], list[str], list[str]]:
    """(shared, defended-only, raw-only) composing models: what the defense adds and what it replaces."""
    shared = [m for m in composing[defended] if m in composing[raw]]
    only_def = [m for m in composing[defended] if m not in composing[raw]]
    only_raw = [m for m in composing[raw] if m not in composing[defended]]
    return shared, only_def, only_raw


def _summed_us(models: dict, names: Sequence[str], fields: Sequence[str]) -> float | None:
    """Sum of per-request µs over models and fields; None if any is missing (a partial sum would mislead)."""
    parts = [models.get(n, {}).get(f) for n in names for f in fields]
    return None if any(p is None for p in parts) else float(sum(parts))


def attribution(levels: Sequence[dict], raw: str, defended: str, composing: dict[str, list[str]]) -> list[dict]:
    """Server-side cost of the defense per level against one reference (``raw``), less exposed to
    machine noise than end-to-end ratios.

    ``extra_us`` is what the defended-only steps (mia_defense) cost beyond the reference-only ones
    (softmax, or the baseline's classifier), per request. ``shared_compute_ratio`` compares the steps
    both ensembles share (the tokenizer, the classifier): the same models on the same inputs, so a
    value far from 1 means the machine, not the defense, moved the numbers of that level.
    """
    by = {(e["protocol"], e["users"], e["model"]): e for e in levels}
    shared, only_def, only_raw = step_groups(composing, raw, defended)
    compute_fields = [f"compute_{k}_us" for k in ("input", "infer", "output")]
    out = []
    for protocol, users in dict.fromkeys((e["protocol"], e["users"]) for e in levels):
        r, d = by[(protocol, users, raw)]["server"], by[(protocol, users, defended)]["server"]
        extra = _summed_us(d["models"], only_def, ["total_us"])
        base = _summed_us(r["models"], only_raw, ["total_us"])
        extra_us = extra - base if extra is not None and base is not None else None
        shared_ratio = ratio(
            _summed_us(d["models"], shared, compute_fields), _summed_us(r["models"], shared, compute_fields)
        )
        out.append(
            {
                "protocol": protocol,
                "users": users,
                "shared_compute_ratio": shared_ratio,
                "defended_only_us": extra,
                "raw_only_us": base,
                "extra_us": extra_us,
                "extra_vs_raw_server": ratio(extra_us, r.get("ensemble", {}).get("server_us")),
            }
        )
    return out


def level_entry(
    cfg: RunConfig, rounds: Sequence[RoundResult], *, protocol: str, users: int, model: str, composing: list[str]
) -> dict:
    """One (protocol, users, model) level over all its rounds: latency, throughput, CPU, server split."""
    rs = sorted(
        (r for r in rounds if (r.protocol, r.users, r.model) == (protocol, users, model)), key=lambda r: r.index
    )
    us = np.concatenate([r.latencies_us for r in rs]) if rs else np.zeros(0)
    seconds = sum(r.seconds for r in rs)
    return {
        "protocol": protocol,
        "users": users,
        "model": model,
        "requests": len(us),
        "errors": int(sum(r.errors for r in rs)),
        "error_examples": [e for r in rs for e in r.error_examples][:5],
        "locust_requests": int(sum(r.locust_requests for r in rs)),
        "locust_failures": int(sum(r.locust_failures for r in rs)),
        "seconds": seconds,
        "throughput_rps": len(us) / seconds if seconds else 0.0,
        "rows_per_s": len(us) * cfg.batch / seconds if seconds else 0.0,
        **percentiles(us),
        "round_p50_ms": [float(np.percentile(r.latencies_us, 50)) / 1e3 if len(r.latencies_us) else None for r in rs],
        "round_throughput_rps": [len(r.latencies_us) / r.seconds if r.seconds else 0.0 for r in rs],
        "client_cpu": float(np.mean([r.client_cpu for r in rs])) if rs else None,
        "server_cpu": float(np.mean([r.server_cpu for r in rs])) if rs and rs[0].server_cpu is not None else None,
        "server_cpu_ms_per_request": _cpu_per_request(rs),
        "server": server_split(summed([r.stats for r in rs]), model, composing),
    }


def _cpu_per_request(rs: Sequence[RoundResult]) -> float | None:
    """Server CPU milliseconds per request over a level's rounds (tritonserver and its stubs): what a
    request costs the machine, whatever share of the cores the other jobs on it left the server."""
    if not rs or any(r.server_cpu is None for r in rs):
        return None
    cpu_s = sum(r.server_cpu * r.seconds for r in rs)
    n = sum(len(r.latencies_us) for r in rs)
    return 1e3 * cpu_s / n if n else None


def level_ratio(raw: dict, dfd: dict) -> dict:
    """Defended over a reference for one (protocol, users): percentiles, throughput, per round pair."""
    return {
        "protocol": raw["protocol"],
        "users": raw["users"],
        "reference": raw["model"],
        **{k: ratio(dfd[f"{k}_ms"], raw[f"{k}_ms"]) for k in ("p50", "p95", "p99", "mean")},
        "throughput": ratio(dfd["throughput_rps"], raw["throughput_rps"]),
        "round_p50": [ratio(d, r) for d, r in zip(dfd["round_p50_ms"], raw["round_p50_ms"], strict=False)],
        "server_cpu_per_request": ratio(dfd.get("server_cpu_ms_per_request"), raw.get("server_cpu_ms_per_request")),
    }


def protocol_summary(
    cfg: RunConfig,
    by_level: dict[tuple[str, int, str], dict],
    ratios: Sequence[dict],
    *,
    protocol: str,
    users: Sequence[int],
    reference: str,
) -> dict:
    """The headline points of one protocol: concurrency 1, saturation, peak throughput and the knee."""
    lv = sorted(users)
    raw_thr = {u: by_level[(protocol, u, reference)]["throughput_rps"] for u in lv}
    best = max(raw_thr.values())
    peak_def = max(by_level[(protocol, u, cfg.defended)]["throughput_rps"] for u in lv)
    points = {"concurrency_1": lv[0], "saturation": lv[-1]}
    out: dict[str, Any] = {
        name: {"users": u, **next(r for r in ratios if r["protocol"] == protocol and r["users"] == u)}
        for name, u in points.items()
    }
    out["peak_throughput_rps"] = {"raw": best, "defended": peak_def, "ratio": ratio(peak_def, best)}
    out["knee_users"] = min(u for u in lv if raw_thr[u] >= KNEE_SHARE * best)
    return out


def run_meta(cfg: RunConfig, composing: dict[str, list[str]]) -> dict:
    """When, on what and with which settings: enough to reproduce or discount the numbers."""
    return {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "build": build_meta(Path(cfg.build_dir)),
        "host": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "load generator and server share this machine's CPUs",
        },
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "goals": GOALS,
        "saturation_rule": (
            "the highest user count measured; the knee (fewest users at which raw throughput reaches"
            f" {KNEE_SHARE:.0%} of its best) is given per protocol below"
        ),
        "composing": composing,
    }


def comparison(
    cfg: RunConfig, levels: Sequence[dict], composing: dict[str, list[str]], reference: str, *, goals: bool
) -> dict:
    """The defended ensemble against one reference: ratios per level, attribution, summary points."""
    keys = list(dict.fromkeys((e["protocol"], e["users"]) for e in levels))
    by_level = {(e["protocol"], e["users"], e["model"]): e for e in levels}
    ratios = [level_ratio(by_level[(p, u, reference)], by_level[(p, u, cfg.defended)]) for p, u in keys]
    summary = {
        protocol: protocol_summary(
            cfg, by_level, ratios, protocol=protocol, users=[u for p, u in keys if p == protocol], reference=reference
        )
        for protocol in dict.fromkeys(p for p, _ in keys)
    }
    return {
        "reference": reference,
        "goals": goals,
        "ratios": ratios,
        "attribution": attribution(levels, reference, cfg.defended, composing),
        "summary": summary,
    }


def summarize(cfg: RunConfig, rounds: Sequence[RoundResult], composing: dict[str, list[str]]) -> dict:
    """The whole report as JSON-ready data: every level and one comparison per reference; the
    top-level ``ratios``, ``attribution`` and ``summary`` are the first (goal) comparison's."""
    keys = sorted({(r.protocol, r.users) for r in rounds}, key=lambda k: (k[0] != "grpc", k[1]))
    levels = [
        level_entry(cfg, rounds, protocol=protocol, users=users, model=model, composing=composing[model])
        for protocol, users in keys
        for model in cfg.models
    ]
    comparisons = [comparison(cfg, levels, composing, ref, goals=i == 0) for i, ref in enumerate(cfg.references)]
    first = comparisons[0]
    return {
        "meta": run_meta(cfg, composing),
        "levels": levels,
        "comparisons": comparisons,
        "ratios": first["ratios"],
        "attribution": first["attribution"],
        "summary": first["summary"],
        "errors": int(sum(e["errors"] for e in levels)),
    }


def build_meta(build_dir: Path) -> dict:
    """The build's dataset, model and classifier hash, or just its folder when it cannot be read."""
    try:
        info = BuildDir(build_dir).summary()
    except (OSError, ValueError):
        return {"dir": str(build_dir)}
    c = info.get("config", {})
    return {
        "dir": str(build_dir),
        "dataset": c.get("dataset"),
        "model": c.get("model"),
        "max_length": c.get("max_length"),
        "classifier_sha256": info.get("classifier_sha256"),
    }
