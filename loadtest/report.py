"""The load test's numbers and reports: settings, per-round results, percentiles, ratios, Markdown, PNG.

Pure functions of what ``veil.loadtest.runner`` measured; nothing here imports gevent or Locust, so
tests (and anyone re-rendering a saved ``report.json``) can use it without patching the process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from veil.export.build_dir import BuildDir
from veil.model_repository.spec import DEFENDED, RAW

STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
GOALS = {"p50": 1.05, "p99": 1.10, "throughput": 0.95}  # issue #5: defended/raw latency at most, throughput at least
KNEE_SHARE = 0.95  # the knee: the fewest users at which raw throughput reaches 95% of its best


@dataclass
class RunConfig:
    """Everything that shapes a run (stored in the report so numbers can be reproduced)."""

    build_dir: str = "build/sst2-minilm"
    out_dir: str | None = None
    quick: bool = False
    grpc_users: tuple[int, ...] = (1, 2, 4, 8, 16)
    http_users: tuple[int, ...] = (1, 8)
    rounds: int = 2
    round_seconds: float = 3.0
    warmup_seconds: float = 0.5
    max_requests: int = 0  # per round and ensemble; 0: bounded by time only
    batch: int = 1
    client_ids: str = "per-user"
    split: str = "nonmember_eval"
    texts: int = 1500
    raw: str = RAW
    defended: str = DEFENDED
    perf_analyzer: bool = True
    perf_request_count: int = 50
    grpc_url: str | None = None
    http_url: str | None = None
    metrics_url: str | None = None

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> RunConfig:
        """CI size: two gRPC user counts, HTTP at one, one short round each, bounded request counts."""
        base = cls(
            quick=True,
            grpc_users=(1, 2),
            http_users=(1,),
            rounds=1,
            round_seconds=1.0,
            warmup_seconds=0.0,
            max_requests=25,
            texts=200,
            perf_analyzer=False,
        )
        return replace(base, **overrides)

    def output_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        return Path(self.build_dir) / ("loadtest-quick" if self.quick else "loadtest")


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
    return {m: {k: after[m][k] - before.get(m, {}).get(k, 0) for k in after[m]} for m in models if m in after}


def plan(cfg: RunConfig) -> list[tuple[str, int, int, str]]:
    """(protocol, users, round, model) in run order: ABBA per user count so drift cancels."""
    out = []
    for protocol, levels in (("grpc", cfg.grpc_users), ("http", cfg.http_users)):
        for users in levels:
            for r in range(cfg.rounds):
                order = (cfg.raw, cfg.defended) if r % 2 == 0 else (cfg.defended, cfg.raw)
                out.extend((protocol, users, r, m) for m in order)
    return out


# --- numbers ----------------------------------------------------------------------------------


def percentiles(us: np.ndarray) -> dict[str, float | None]:
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
            **{f"{k}_us": per_request(s, k) for k in ("queue", "compute_input", "compute_infer", "compute_output")},
        }
    out["models"] = models
    return out


def summed(stat_list: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for stats in stat_list:
        for m, entry in stats.items():
            acc = total.setdefault(m, dict.fromkeys(entry, 0))
            for k, v in entry.items():
                acc[k] += v
    return total


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def attribution(levels: Sequence[dict], raw: str, defended: str, composing: dict[str, list[str]]) -> list[dict]:
    """Server-side cost of the defense per level, less exposed to machine noise than end-to-end ratios.

    ``extra_us`` is what the defended-only steps (mia_defense) cost beyond the raw-only ones
    (softmax), per request. ``shared_compute_ratio`` compares the steps both ensembles share
    (tokenizer, classifier): the same models on the same inputs, so a value far from 1 means the
    machine, not the defense, moved the numbers of that level.
    """
    by = {(e["protocol"], e["users"], e["model"]): e for e in levels}
    shared = [m for m in composing[defended] if m in composing[raw]]
    only_def = [m for m in composing[defended] if m not in composing[raw]]
    only_raw = [m for m in composing[raw] if m not in composing[defended]]

    def compute(models: dict, names: Sequence[str]) -> float | None:
        parts = [models.get(n, {}).get(f"compute_{k}_us") for n in names for k in ("input", "infer", "output")]
        return None if any(p is None for p in parts) else float(sum(parts))

    def total(models: dict, names: Sequence[str]) -> float | None:
        parts = [models.get(n, {}).get("total_us") for n in names]
        return None if any(p is None for p in parts) else float(sum(parts))

    out = []
    for protocol, users in dict.fromkeys((e["protocol"], e["users"]) for e in levels):
        r, d = by[(protocol, users, raw)]["server"], by[(protocol, users, defended)]["server"]
        extra = total(d["models"], only_def)
        base = total(r["models"], only_raw)
        extra_us = extra - base if extra is not None and base is not None else None
        out.append(
            {
                "protocol": protocol,
                "users": users,
                "shared_compute_ratio": ratio(compute(d["models"], shared), compute(r["models"], shared)),
                "defended_only_us": extra,
                "raw_only_us": base,
                "extra_us": extra_us,
                "extra_vs_raw_server": ratio(extra_us, r.get("ensemble", {}).get("server_us")),
            }
        )
    return out


def summarize(cfg: RunConfig, rounds: Sequence[RoundResult], composing: dict[str, list[str]]) -> dict:
    levels = []
    keys = sorted({(r.protocol, r.users) for r in rounds}, key=lambda k: (k[0] != "grpc", k[1]))
    by_level: dict[tuple[str, int, str], dict] = {}
    for protocol, users in keys:
        for model in (cfg.raw, cfg.defended):
            rs = sorted(
                (r for r in rounds if (r.protocol, r.users, r.model) == (protocol, users, model)), key=lambda r: r.index
            )
            us = np.concatenate([r.latencies_us for r in rs]) if rs else np.zeros(0)
            seconds = sum(r.seconds for r in rs)
            entry = {
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
                "round_p50_ms": [
                    float(np.percentile(r.latencies_us, 50)) / 1e3 if len(r.latencies_us) else None for r in rs
                ],
                "round_throughput_rps": [len(r.latencies_us) / r.seconds if r.seconds else 0.0 for r in rs],
                "client_cpu": float(np.mean([r.client_cpu for r in rs])) if rs else None,
                "server_cpu": float(np.mean([r.server_cpu for r in rs]))
                if rs and rs[0].server_cpu is not None
                else None,
                "server": server_split(summed([r.stats for r in rs]), model, composing[model]),
            }
            levels.append(entry)
            by_level[(protocol, users, model)] = entry
    ratios = []
    for protocol, users in keys:
        raw, dfd = by_level[(protocol, users, cfg.raw)], by_level[(protocol, users, cfg.defended)]
        ratios.append(
            {
                "protocol": protocol,
                "users": users,
                **{k: ratio(dfd[f"{k}_ms"], raw[f"{k}_ms"]) for k in ("p50", "p95", "p99", "mean")},
                "throughput": ratio(dfd["throughput_rps"], raw["throughput_rps"]),
                "round_p50": [ratio(d, r) for d, r in zip(dfd["round_p50_ms"], raw["round_p50_ms"], strict=False)],
            }
        )
    summary = {}
    for protocol in dict.fromkeys(p for p, _ in keys):
        lv = sorted(u for p, u in keys if p == protocol)
        raw_thr = {u: by_level[(protocol, u, cfg.raw)]["throughput_rps"] for u in lv}
        best = max(raw_thr.values())
        knee = min(u for u in lv if raw_thr[u] >= KNEE_SHARE * best)
        peak_raw = best
        peak_def = max(by_level[(protocol, u, cfg.defended)]["throughput_rps"] for u in lv)
        points = {"concurrency_1": lv[0], "saturation": lv[-1]}
        summary[protocol] = {
            name: {"users": u, **next(r for r in ratios if r["protocol"] == protocol and r["users"] == u)}
            for name, u in points.items()
        }
        summary[protocol]["peak_throughput_rps"] = {
            "raw": peak_raw,
            "defended": peak_def,
            "ratio": ratio(peak_def, peak_raw),
        }
        summary[protocol]["knee_users"] = knee
    return {
        "meta": {
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
        },
        "levels": levels,
        "ratios": ratios,
        "attribution": attribution(levels, cfg.raw, cfg.defended, composing),
        "summary": summary,
        "errors": int(sum(e["errors"] for e in levels)),
    }


def build_meta(build_dir: Path) -> dict:
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


# --- report -----------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _goal(value: float | None, bound: float, at_most: bool) -> str:
    if value is None:
        return "n/a"
    ok = value <= bound if at_most else value >= bound
    return f"{value:.3f} {'met' if ok else 'missed'}"


def to_markdown(report: dict) -> str:
    m = report["meta"]
    c = m["config"]
    b = m["build"]
    by = {(e["protocol"], e["users"], e["model"]): e for e in report["levels"]}
    raw, dfd = c["raw"], c["defended"]
    where = "embedded, started by the runner" if m.get("embedded_server") else "external"
    lines = [
        "# Latency under load: defended vs raw",
        "",
        f"{m['created']} · build `{b.get('dir')}` ({b.get('dataset')}, {b.get('model')},"
        f" max_length {b.get('max_length')}) · Triton {m.get('server', {}).get('version', '?')} ({where})"
        f" · {m['host']['cpus']} CPUs, {m['host']['platform']} · load generator and server share these CPUs.",
        "",
        f"Closed-loop Locust users (no think time), {c['batch']} sentence(s) per request from `{c['split']}`,"
        f" client ids {c['client_ids']}; {c['rounds']} round(s) of {c['round_seconds']:g} s per ensemble and user count"
        f" after {c['warmup_seconds']:g} s warm-up, ensembles alternating ABBA"
        + (f", at most {c['max_requests']} requests per round" if c["max_requests"] else "")
        + ". Latencies from the users' own perf_counter samples (µs resolution).",
        "",
        "## Summary",
        "",
        f"Goals (issue #5): defended/raw p50 <= {GOALS['p50']}, p99 <= {GOALS['p99']},"
        f" throughput >= {GOALS['throughput']}. Saturation: {m['saturation_rule']}.",
        "",
        "| protocol | point | users | p50 raw / defended ms | p95 raw / defended ms | p99 raw / defended ms"
        " | req/s raw / defended | p50 ratio | p95 ratio | p99 ratio | throughput ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol, s in report["summary"].items():
        for point in ("concurrency_1", "saturation"):
            p = s[point]
            if point == "saturation" and p["users"] == s["concurrency_1"]["users"]:
                continue  # one level only, or saturated at once: the row above says it all
            r, d = by[(protocol, p["users"], raw)], by[(protocol, p["users"], dfd)]
            lines.append(
                f"| {protocol} | {point.replace('_', ' ')} | {p['users']} |"
                f" {_f(r['p50_ms'])} / {_f(d['p50_ms'])} | {_f(r['p95_ms'])} / {_f(d['p95_ms'])} |"
                f" {_f(r['p99_ms'])} / {_f(d['p99_ms'])} |"
                f" {_f(r['throughput_rps'], '{:.1f}')} / {_f(d['throughput_rps'], '{:.1f}')} |"
                f" {_goal(p['p50'], GOALS['p50'], True)} | {_f(p['p95'], '{:.3f}')} |"
                f" {_goal(p['p99'], GOALS['p99'], True)} | {_goal(p['throughput'], GOALS['throughput'], False)} |"
            )
    lines += ["", "Peak throughput (best user count of each ensemble):", ""]
    for protocol, s in report["summary"].items():
        pk = s["peak_throughput_rps"]
        lines.append(
            f"- {protocol}: raw {pk['raw']:.1f} req/s, defended {pk['defended']:.1f} req/s,"
            f" ratio {_goal(pk['ratio'], GOALS['throughput'], False)}; raw saturates from {s['knee_users']} user(s)"
        )
    lines += [
        "",
        "## Every level",
        "",
        "| protocol | users | ensemble | requests | errors | req/s | p50 ms | p95 ms | p99 ms | mean ms"
        " | per-round p50 ms | client CPU | server CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["levels"]:
        rounds = ", ".join(_f(x) for x in e["round_p50_ms"])
        lines.append(
            f"| {e['protocol']} | {e['users']} | {e['model']} | {e['requests']} | {e['errors']} |"
            f" {e['throughput_rps']:.1f} | {_f(e['p50_ms'])} | {_f(e['p95_ms'])} | {_f(e['p99_ms'])} |"
            f" {_f(e['mean_ms'])} |"
            f" {rounds} | {_f(e['client_cpu'])} | {_f(e['server_cpu'])} |"
        )
    lines += [
        "",
        "CPU columns: CPU seconds per wall second (1.00 = one core busy) of the load generator and of tritonserver",
        "with its python-backend stubs.",
        "",
        "| protocol | users | p50 ratio | p95 ratio | p99 ratio | mean ratio | throughput ratio"
        " | p50 ratio per round pair |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["ratios"]:
        lines.append(
            f"| {r['protocol']} | {r['users']} | {_f(r['p50'], '{:.3f}')} | {_f(r['p95'], '{:.3f}')} |"
            f" {_f(r['p99'], '{:.3f}')} | {_f(r['mean'], '{:.3f}')} | {_f(r['throughput'], '{:.3f}')} |"
            f" {', '.join(_f(x, '{:.3f}') for x in r['round_p50'])} |"
        )
    lines += [
        "",
        "## Where the time goes (Triton statistics, µs per request)",
        "",
        "Per composing model: queue, compute input/infer/output (the python backend's IPC to its stub is inside"
        " compute), and the average dynamic batch. `client - server` is the client-observed mean latency minus the"
        " ensemble's server-side mean: (de)serialisation, transport and the load generator itself.",
        "",
        "| protocol | users | ensemble | model | requests | avg batch | queue | compute input | compute infer"
        " | compute output | total |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    points = sorted(
        {(p, s[k]["users"]) for p, s in report["summary"].items() for k in ("concurrency_1", "saturation")},
        key=lambda k: (k[0] != "grpc", k[1]),
    )
    for protocol, users in points:
        for model in (raw, dfd):
            e = by[(protocol, users, model)]
            sv = e["server"]
            for name, s in sv["models"].items():
                lines.append(
                    f"| {protocol} | {users} | {model} | {name} | {s['requests']} | {_f(s['avg_batch'])} |"
                    f" {_f(s['queue_us'], '{:.0f}')} | {_f(s['compute_input_us'], '{:.0f}')} |"
                    f" {_f(s['compute_infer_us'], '{:.0f}')} | {_f(s['compute_output_us'], '{:.0f}')} |"
                    f" {_f(s['total_us'], '{:.0f}')} |"
                )
            ens = sv.get("ensemble", {})
            server_us = ens.get("server_us")
            client_us = e["mean_ms"] * 1e3 if e["mean_ms"] is not None else None
            gap = client_us - server_us if client_us is not None and server_us is not None else None
            lines.append(
                f"| {protocol} | {users} | {model} | **ensemble** (server) | {ens.get('requests', 'n/a')} | |"
                f" | | | | {_f(server_us, '{:.0f}')} (client mean {_f(client_us, '{:.0f}')},"
                f" client - server {_f(gap, '{:.0f}')}) |"
            )
    only_def = [x for x in m["composing"][dfd] if x not in m["composing"][raw]]
    only_raw = [x for x in m["composing"][raw] if x not in m["composing"][dfd]]
    shared = [x for x in m["composing"][dfd] if x in m["composing"][raw]]
    lines += [
        "",
        f"Cost of the defense step on the server: time in {'+'.join(only_def)} minus time in {'+'.join(only_raw)},"
        f" per request, and against the raw ensemble's server time. Noise check: the compute time of the steps both"
        f" ensembles share ({', '.join(shared)}) in defended rounds over raw rounds; it would be 1.00 on a quiet"
        " machine, so where it is far from 1 the end-to-end ratios of that level mostly measure noise.",
        "",
        f"| protocol | users | {'+'.join(only_def)} µs | {'+'.join(only_raw)} µs | extra µs per request"
        " | extra / raw server time | noise check (shared steps, defended/raw) |",
        "|---|---|---|---|---|---|---|",
    ]
    for att in report.get("attribution") or attribution(report["levels"], raw, dfd, m["composing"]):
        lines.append(
            f"| {att['protocol']} | {att['users']} | {_f(att['defended_only_us'], '{:.0f}')} |"
            f" {_f(att['raw_only_us'], '{:.0f}')} | {_f(att['extra_us'], '{:.0f}')} |"
            f" {_f(att['extra_vs_raw_server'], '{:.1%}')} | {_f(att['shared_compute_ratio'], '{:.2f}')} |"
        )
    dc = m.get("defense_counters") or {}
    if dc.get("veil_outputs_total"):
        lines += [
            "",
            f"Defense during the run (`{m['defense_model']}` counters): {int(dc['veil_outputs_total'])} outputs,"
            f" {dc.get('veil_outputs_perturbed_total', 0) / dc['veil_outputs_total']:.1%} perturbed,"
            f" {dc.get('veil_pgd_steps_total', 0) / max(dc.get('veil_outputs_perturbed_total', 0), 1):.2f} PGD steps"
            " per perturbed output.",
        ]
    lines += ["", "## perf_analyzer cross-check", ""]
    pa_report = report.get("perf_analyzer", {})
    runs = pa_report.get("runs", [])
    if not runs:
        lines.append(pa_report.get("status", "not run"))
    else:
        lines += [
            f"{pa_report['status']}; gRPC, count windows of {c['perf_request_count']} requests; µs from its CSV.",
            "",
            "| model | concurrency | infer/s | p50 ms | p95 ms | p99 ms | server queue µs | server compute infer µs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in runs:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['concurrency']} | error: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['concurrency']} | {r.get('Inferences/Second', 0):.1f} |"
                f" {r.get('p50 latency', 0) / 1e3:.2f} | {r.get('p95 latency', 0) / 1e3:.2f} |"
                f" {r.get('p99 latency', 0) / 1e3:.2f} | {r.get('Server Queue', 0):.0f} |"
                f" {r.get('Server Compute Infer', 0):.0f} |"
            )
    if report["errors"]:
        lines += ["", f"## Errors: {report['errors']}", ""]
        for e in report["levels"]:
            for ex in e["error_examples"]:
                lines.append(f"- {e['protocol']} {e['users']} {e['model']}: {ex}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """p50/p99 latency and throughput against concurrency, both ensembles, one column per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = report["meta"]["config"]
    protocols = list(dict.fromkeys(e["protocol"] for e in report["levels"]))
    fig, axes = plt.subplots(2, len(protocols), figsize=(5.5 * len(protocols), 7), squeeze=False)
    colors = {c["raw"]: "tab:blue", c["defended"]: "tab:orange"}
    for j, protocol in enumerate(protocols):
        lat, thr = axes[0][j], axes[1][j]
        for model in (c["raw"], c["defended"]):
            es = sorted(
                (e for e in report["levels"] if e["protocol"] == protocol and e["model"] == model),
                key=lambda e: e["users"],
            )
            users = [e["users"] for e in es]
            lat.plot(users, [e["p50_ms"] for e in es], "o-", color=colors[model], label=f"{model} p50")
            lat.plot(users, [e["p99_ms"] for e in es], "s--", color=colors[model], alpha=0.7, label=f"{model} p99")
            thr.plot(users, [e["throughput_rps"] for e in es], "o-", color=colors[model], label=model)
        levels = sorted({e["users"] for e in report["levels"] if e["protocol"] == protocol})
        for ax in (lat, thr):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels, [str(u) for u in levels])
            ax.minorticks_off()
            ax.set_ylim(bottom=0)
            ax.set_xlabel("concurrent users")
            ax.grid(True, alpha=0.3)
        lat.set_title(f"{protocol.upper()}: latency")
        lat.set_ylabel("ms")
        thr.set_title(f"{protocol.upper()}: throughput")
        thr.set_ylabel("requests/s")
        lat.legend(fontsize=8)
        thr.legend(fontsize=8)
    fig.suptitle(
        f"Veil defended vs raw ({report['meta']['build'].get('model')}, {report['meta']['host']['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(report: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "latency_vs_concurrency.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(to_markdown(report))
    plot(report, paths["png"])
    return paths
