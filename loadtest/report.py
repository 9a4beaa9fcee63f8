"""The load test's reports: Markdown tables and the latency/throughput plot of a summarized run.

Renders what ``veil.loadtest.results.summarize`` produced (or a saved ``report.json``); the run's
settings live in ``config.py`` and the arithmetic in ``results.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from veil.loadtest.config import GOALS
from veil.loadtest.results import PHASES, attribution, step_groups

Levels = dict[tuple[str, int, str], dict]  # (protocol, users, model) -> level entry


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _goal(value: float | None, bound: float, at_most: bool) -> str:
    if value is None:
        return "n/a"
    ok = value <= bound if at_most else value >= bound
    return f"{value:.3f} {'met' if ok else 'missed'}"


def _row(*cells: object) -> str:
    """One Markdown table row; an empty cell stays one space wide."""
    return "|" + "".join(f" {c} |" if c != "" else " |" for c in cells)


def _by_level(report: dict) -> Levels:
    return {(e["protocol"], e["users"], e["model"]): e for e in report["levels"]}


def comparisons(report: dict) -> list[dict]:
    """Each reference the defended ensemble was compared with (a report.json written before the
    undefended baseline existed has one, against veil_raw, at the top level)."""
    if report.get("comparisons"):
        return report["comparisons"]
    raw = report["meta"]["config"]["raw"]
    keys = ("ratios", "attribution", "summary")
    return [{"reference": raw, "goals": True, **{k: report.get(k) for k in keys}}]


def _models(report: dict) -> list[str]:
    c = report["meta"]["config"]
    return [*(x["reference"] for x in comparisons(report)), c["defended"]]


def header(report: dict) -> list[str]:
    """Title, build, server and host, and how the load was generated."""
    m = report["meta"]
    c, b = m["config"], m["build"]
    where = "embedded, started by the runner" if m.get("embedded_server") else "external"
    return [
        "# Latency under load: defended vs undefended",
        "",
        f"{m['created']} · build `{b.get('dir')}` ({b.get('dataset')}, {b.get('model')},"
        f" max_length {b.get('max_length')}) · Triton {m.get('server', {}).get('version', '?')} ({where})"
        f" · {m['host']['cpus']} CPUs, {m['host']['platform']} · load generator and server share these CPUs.",
        "",
        f"Closed-loop Locust users (no think time), {c['batch']} sentence(s) per request from `{c['split']}`,"
        f" client ids {c['client_ids']}; {c['rounds']} round(s) of {c['round_seconds']:g} s per ensemble and user count"
        f" after {c['warmup_seconds']:g} s warm-up, ensembles alternating ABBA"
        + (f", at most {c['max_requests']} requests per round" if c["max_requests"] else "")
        + ". Latencies from the users' own perf_counter samples (µs resolution)."
        + (f" Served: the build's repository rewritten with {c['serving']}." if c.get("serving") else ""),
    ]


def summary_table(report: dict) -> list[str]:
    """Per reference: concurrency 1 and saturation per protocol against the goals, then peak throughput."""
    lines = ["## Summary", ""]
    for comp in comparisons(report):
        lines += [*_summary_of(report, comp), ""]
    return lines[:-1]


def _summary_of(report: dict, comp: dict) -> list[str]:
    c = report["meta"]["config"]
    by = _by_level(report)
    ref = comp["reference"]
    what = "the goals" if comp["goals"] else "for reference (same goals shown)"
    lines = [
        f"### {c['defended']} against {ref}: {what}",
        "",
        f"Goals: defended/{ref} p50 <= {GOALS['p50']}, p99 <= {GOALS['p99']},"
        f" throughput >= {GOALS['throughput']}. Saturation: {report['meta']['saturation_rule']}.",
        "",
        f"| protocol | point | users | p50 {ref} / defended ms | p95 ms | p99 ms"
        " | req/s | p50 ratio | p95 ratio | p99 ratio | throughput ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol, s in comp["summary"].items():
        for point in ("concurrency_1", "saturation"):
            p = s[point]
            if point == "saturation" and p["users"] == s["concurrency_1"]["users"]:
                continue  # one level only, or saturated at once: the row above says it all
            r, d = by[(protocol, p["users"], ref)], by[(protocol, p["users"], c["defended"])]
            pair = [f"{_f(r[k])} / {_f(d[k])}" for k in ("p50_ms", "p95_ms", "p99_ms")]
            rps = f"{_f(r['throughput_rps'], '{:.1f}')} / {_f(d['throughput_rps'], '{:.1f}')}"
            goals = (
                _goal(p["p50"], GOALS["p50"], True),
                _f(p["p95"], "{:.3f}"),
                _goal(p["p99"], GOALS["p99"], True),
                _goal(p["throughput"], GOALS["throughput"], False),
            )
            lines.append(_row(protocol, point.replace("_", " "), p["users"], *pair, rps, *goals))
    lines += ["", "Peak throughput (best user count of each ensemble):", ""]
    for protocol, s in comp["summary"].items():
        pk = s["peak_throughput_rps"]
        lines.append(
            f"- {protocol}: {ref} {pk['raw']:.1f} req/s, defended {pk['defended']:.1f} req/s,"
            f" ratio {_goal(pk['ratio'], GOALS['throughput'], False)}; {ref} saturates from {s['knee_users']} user(s)"
        )
    return lines


def levels_table(report: dict) -> list[str]:
    """Every (protocol, users, ensemble) level, with both processes' CPU use."""
    lines = [
        "## Every level",
        "",
        "| protocol | users | ensemble | requests | errors | req/s | p50 ms | p95 ms | p99 ms | mean ms"
        " | per-round p50 ms | client CPU | server CPU | server CPU ms per request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["levels"]:
        latency = [_f(e[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")]
        rounds = ", ".join(_f(x) for x in e["round_p50_ms"])
        lines.append(
            _row(
                *(e[k] for k in ("protocol", "users", "model", "requests", "errors")),
                f"{e['throughput_rps']:.1f}",
                *latency,
                rounds,
                _f(e["client_cpu"]),
                _f(e["server_cpu"]),
                _f(e.get("server_cpu_ms_per_request")),
            )
        )
    lines += [
        "",
        "CPU columns: CPU seconds per wall second (1.00 = one core busy) of the load generator and of tritonserver",
        "with its python-backend stubs.",
    ]
    return lines


def ratios_table(report: dict) -> list[str]:
    """Defended/reference ratios at every user count, and per round pair (how much the rounds agree)."""
    lines = [
        "| reference | protocol | users | p50 ratio | p95 ratio | p99 ratio | mean ratio | throughput ratio"
        " | server CPU per request ratio | p50 ratio per round pair |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for comp in comparisons(report):
        for r in comp["ratios"]:
            ratios = [
                _f(r.get(k), "{:.3f}") for k in ("p50", "p95", "p99", "mean", "throughput", "server_cpu_per_request")
            ]
            per_round = ", ".join(_f(x, "{:.3f}") for x in r["round_p50"])
            lines.append(_row(comp["reference"], r["protocol"], r["users"], *ratios, per_round))
    lines += [
        "",
        "Server CPU per request: CPU milliseconds of tritonserver and its stubs per request, defended over the"
        " reference; it does not depend on how much of the machine other jobs took, so on a shared machine it is"
        " the steadier measure of what the defense adds where the server is CPU-bound.",
    ]
    return lines


def server_time_table(report: dict) -> list[str]:
    """Triton's statistics per composing model at the summary points, and the client-server gap."""
    by = _by_level(report)
    lines = [
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
        for model in _models(report):
            e = by[(protocol, users, model)]
            sv = e["server"]
            for name, s in sv["models"].items():
                us = [_f(s[f"{k}_us"], "{:.0f}") for k in (*PHASES, "total")]
                lines.append(_row(protocol, users, model, name, s["requests"], _f(s["avg_batch"]), *us))
            ens = sv.get("ensemble", {})
            server_us = ens.get("server_us")
            client_us = e["mean_ms"] * 1e3 if e["mean_ms"] is not None else None
            gap = client_us - server_us if client_us is not None and server_us is not None else None
            server, client, diff = (_f(x, "{:.0f}") for x in (server_us, client_us, gap))
            total = f"{server} (client mean {client}, client - server {diff})"
            lines.append(
                _row(protocol, users, model, "**ensemble** (server)", ens.get("requests", "n/a"), *[""] * 5, total)
            )
    return lines


def defense_cost_table(report: dict) -> list[str]:
    """Per reference: the defense step's own server time per level, with the shared steps as a noise check."""
    lines: list[str] = []
    for comp in comparisons(report):
        lines += [*_defense_cost_of(report, comp), ""]
    return lines[:-1]


def _defense_cost_of(report: dict, comp: dict) -> list[str]:
    m = report["meta"]
    raw, dfd = comp["reference"], m["config"]["defended"]
    shared, only_def, only_raw = step_groups(m["composing"], raw, dfd)
    lines = [
        f"Cost of the defense step on the server: time in {'+'.join(only_def)} minus time in {'+'.join(only_raw)},"
        f" per request, and against the raw ensemble's server time. Noise check: the compute time of the steps both"
        f" ensembles share ({', '.join(shared)}) in defended rounds over raw rounds; it would be 1.00 on a quiet"
        " machine, so where it is far from 1 the end-to-end ratios of that level mostly measure noise.",
        "",
        f"| protocol | users | {'+'.join(only_def)} µs | {'+'.join(only_raw)} µs | extra µs per request"
        " | extra / raw server time | noise check (shared steps, defended/raw) |",
        "|---|---|---|---|---|---|---|",
    ]
    # reports saved before attribution existed are re-derived from their levels
    for att in comp.get("attribution") or attribution(report["levels"], raw, dfd, m["composing"]):
        us = [_f(att[k], "{:.0f}") for k in ("defended_only_us", "raw_only_us", "extra_us")]
        share, noise = _f(att["extra_vs_raw_server"], "{:.1%}"), _f(att["shared_compute_ratio"], "{:.2f}")
        lines.append(_row(att["protocol"], att["users"], *us, share, noise))
    return lines


def defense_counters_note(report: dict) -> list[str]:
    """Veil's own counters over the run (perturbed share, PGD steps); empty when none were read."""
    m = report["meta"]
    dc = m.get("defense_counters") or {}
    if not dc.get("veil_outputs_total"):
        return []
    return [
        f"Defense during the run (`{m['defense_model']}` counters): {int(dc['veil_outputs_total'])} outputs,"
        f" {dc.get('veil_outputs_perturbed_total', 0) / dc['veil_outputs_total']:.1%} perturbed,"
        f" {dc.get('veil_pgd_steps_total', 0) / max(dc.get('veil_outputs_perturbed_total', 0), 1):.2f} PGD steps"
        " per perturbed output.",
    ]


def perf_analyzer_table(report: dict) -> list[str]:
    """perf_analyzer's own numbers for the same ensembles, or why it did not run."""
    lines = ["## perf_analyzer cross-check", ""]
    pa_report = report.get("perf_analyzer", {})
    runs = pa_report.get("runs", [])
    if not runs:
        return [*lines, pa_report.get("status", "not run")]
    lines += [
        f"{pa_report['status']}; gRPC, count windows of {report['meta']['config']['perf_request_count']} requests;"
        " µs from its CSV.",
        "",
        "| model | concurrency | infer/s | p50 ms | p95 ms | p99 ms | server queue µs | server compute infer µs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        if "error" in r:
            lines.append(_row(r["model"], r["concurrency"], f"error: {r['error']}", *[""] * 5))
            continue
        ms = [f"{r.get(f'{p} latency', 0) / 1e3:.2f}" for p in ("p50", "p95", "p99")]
        server = [f"{r.get(k, 0):.0f}" for k in ("Server Queue", "Server Compute Infer")]
        lines.append(_row(r["model"], r["concurrency"], f"{r.get('Inferences/Second', 0):.1f}", *ms, *server))
    return lines


def errors_list(report: dict) -> list[str]:
    """Examples of failed requests per level; empty for a clean run."""
    if not report["errors"]:
        return []
    lines = [f"## Errors: {report['errors']}", ""]
    for e in report["levels"]:
        lines += [f"- {e['protocol']} {e['users']} {e['model']}: {ex}" for ex in e["error_examples"]]
    return lines


SECTIONS: tuple[Callable[[dict], list[str]], ...] = (
    header,
    summary_table,
    levels_table,
    ratios_table,
    server_time_table,
    defense_cost_table,
    defense_counters_note,
    perf_analyzer_table,
    errors_list,
)


def to_markdown(report: dict) -> str:
    """The whole report: each non-empty section, separated by a blank line."""
    lines: list[str] = []
    for section in SECTIONS:
        part = section(report)
        if part:
            lines += [*([""] if lines else []), *part]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """p50/p99 latency and throughput against concurrency, both ensembles, one column per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(e["protocol"] for e in report["levels"]))
    fig, axes = plt.subplots(2, len(protocols), figsize=(5.5 * len(protocols), 7), squeeze=False)
    models = _models(report)
    colors = dict(zip(models, ("tab:green", "tab:blue", "tab:orange", "tab:red"), strict=False))
    for j, protocol in enumerate(protocols):
        lat, thr = axes[0][j], axes[1][j]
        for model in models:
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
        f"Veil defended vs {' and '.join(models[:-1])} ({report['meta']['build'].get('model')},"
        f" {report['meta']['host']['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(report: dict, out: Path) -> dict[str, Path]:
    """report.json (the data), report.md and the PNG, side by side in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "latency_vs_concurrency.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["markdown"].write_text(to_markdown(report))
    plot(report, paths["png"])
    return paths
