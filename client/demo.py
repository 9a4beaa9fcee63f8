"""The main job's second half: serve the built repository and show what the defense does.

Starts the embedded tritonserver on free loopback ports, classifies held-out members and
non-members through the raw and the defended ensembles over HTTP and gRPC (the defended one
paced, as benign traffic, then again at full speed), prints a summary (accuracy raw vs defended,
share of outputs perturbed, mean |delta|, what the full-speed caller got), and stops the server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

from veil.client.triton import VeilClient
from veil.export.build_dir import BuildDir
from veil.model_repository.spec import DEFENDED, RAW
from veil.serving.launcher import TritonServer, repositories_for
from veil.wire import METRICS_FLUSH_S

PACE = 4.0
"""The defended rows are sent as benign traffic: each request waits 4 round trips before the next
(``VeilClient.classify(pace=)``), so the caller is not bulk traffic to adaptive intensity."""
BULK = "bulk"
"""The same rows again under another id, back to back: what a full-speed caller gets."""


def _centered_log(p: np.ndarray) -> np.ndarray:
    lp = np.log(np.clip(p.astype(np.float64), 1e-30, None))
    return lp - lp.mean(1, keepdims=True)


def compare(raw: np.ndarray, defended: np.ndarray) -> dict[str, float]:
    """What the defense changed, read off the outputs alone."""
    perturbed = ~(raw == defended).all(1)
    dlogit = np.abs(_centered_log(defended) - _centered_log(raw)).mean(1)
    dprob = np.abs(defended - raw).sum(1) / 2
    return {
        "perturbed_share": float(perturbed.mean()),
        "mean_abs_delta_logit": float(dlogit[perturbed].mean()) if perturbed.any() else 0.0,
        "mean_total_variation": float(dprob[perturbed].mean()) if perturbed.any() else 0.0,
        "mean_confidence_raw": float(raw.max(1).mean()),
        "mean_confidence_defended": float(defended.max(1).mean()),
    }


def server_metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in requests.get(url, timeout=5).text.splitlines():
        if line.startswith("veil_") and 'model="mia_defense"' in line:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


def run(build_dir: Path, *, rows: int, data_dir: str | None, console: Console) -> dict:
    build = BuildDir(build_dir)
    members = build.rows("member_eval", limit=rows, data_dir=data_dir)
    nonmembers = build.rows("nonmember_eval", limit=rows, data_dir=data_dir)
    texts = members.texts + nonmembers.texts
    truth = np.concatenate([members.labels, nonmembers.labels])
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]

    log = build.server_log
    t0 = time.perf_counter()
    with TritonServer(repositories_for(build.repository), log_file=log) as server:
        console.print(
            f"tritonserver ready in {time.perf_counter() - t0:.1f}s "
            f"(HTTP {server.http_url}, gRPC {server.grpc_url}; log {log})"
        )
        results = {}
        for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
            with VeilClient(url, protocol=protocol) as client:
                for model, pace, key in ((RAW, 0.0, RAW), (DEFENDED, PACE, DEFENDED), (DEFENDED, 0.0, BULK)):
                    t = time.perf_counter()
                    cid = f"demo-{protocol}" + ("-bulk" if key == BULK else "")
                    probs, labels = client.classify(texts, model=model, client_id=cid, batch_size=32, pace=pace)
                    results[(protocol, key)] = (probs, labels, time.perf_counter() - t)
        time.sleep(2 * METRICS_FLUSH_S)  # let the defense step send its last metric updates
        metrics = server_metrics(server.metrics_url)
    summary: dict = {"rows": {"members": int(is_member.sum()), "nonmembers": int((~is_member).sum())}}
    for protocol in ("http", "grpc"):
        raw_p, raw_l, raw_t = results[(protocol, RAW)]
        def_p, def_l, def_t = results[(protocol, DEFENDED)]
        bulk_p, bulk_l, _ = results[(protocol, BULK)]
        if not ((raw_l == def_l).all() and (raw_l == bulk_l).all()):
            raise AssertionError(f"{protocol}: defended labels differ from raw labels")
        summary[protocol] = {
            "accuracy_raw_nonmembers": float((raw_l[~is_member] == truth[~is_member]).mean()),
            "accuracy_defended_nonmembers": float((def_l[~is_member] == truth[~is_member]).mean()),
            "accuracy_raw_members": float((raw_l[is_member] == truth[is_member]).mean()),
            "accuracy_defended_members": float((def_l[is_member] == truth[is_member]).mean()),
            "labels_identical": True,
            "seconds_raw": raw_t,
            "seconds_defended": def_t,
            **compare(raw_p, def_p),
            "bulk_coarser_share": float((bulk_p != def_p).any(1).mean()),
            "bulk_mean_confidence": float(bulk_p.max(1).mean()),
        }
    summary["http_grpc_raw_identical"] = bool((results[("http", RAW)][0] == results[("grpc", RAW)][0]).all())
    summary["http_grpc_defended_identical_share"] = float(
        (results[("http", DEFENDED)][0] == results[("grpc", DEFENDED)][0]).all(1).mean()
    )
    summary["server_metrics"] = metrics
    if metrics.get("veil_outputs_total"):
        summary["server_perturbed_share"] = metrics["veil_outputs_perturbed_total"] / metrics["veil_outputs_total"]
        summary["server_mean_pgd_steps"] = metrics["veil_pgd_steps_total"] / max(
            metrics["veil_outputs_perturbed_total"], 1
        )
    summary["examples"] = [
        {
            "text": texts[i],
            "member": bool(is_member[i]),
            "raw": results[("http", RAW)][0][i].round(4).tolist(),
            "defended": results[("http", DEFENDED)][0][i].round(4).tolist(),
        }
        for i in (0, 1, len(texts) - 2, len(texts) - 1)
    ]
    return summary


def show(summary: dict, console: Console) -> None:
    table = Table(title="Veil: raw vs defended, through the real Triton server")
    table.add_column("")
    for protocol in ("http", "grpc"):
        table.add_column(protocol.upper(), justify="right")
    rows = [
        ("accuracy, held-out (raw)", "accuracy_raw_nonmembers", "{:.2%}"),
        ("accuracy, held-out (defended)", "accuracy_defended_nonmembers", "{:.2%}"),
        ("accuracy, members (raw)", "accuracy_raw_members", "{:.2%}"),
        ("accuracy, members (defended)", "accuracy_defended_members", "{:.2%}"),
        ("outputs perturbed", "perturbed_share", "{:.1%}"),
        ("mean |delta| (logits, perturbed rows)", "mean_abs_delta_logit", "{:.3f}"),
        ("mean total variation (perturbed rows)", "mean_total_variation", "{:.3f}"),
        ("mean top probability, raw", "mean_confidence_raw", "{:.3f}"),
        ("mean top probability, defended", "mean_confidence_defended", "{:.3f}"),
        ("full-speed caller: rows answered otherwise", "bulk_coarser_share", "{:.1%}"),
        ("full-speed caller: mean top probability", "bulk_mean_confidence", "{:.3f}"),
        ("seconds, raw ensemble (back to back)", "seconds_raw", "{:.2f}"),
        ("seconds, defended ensemble (paced)", "seconds_defended", "{:.2f}"),
    ]
    for title, key, fmt in rows:
        table.add_row(title, *(fmt.format(summary[p][key]) for p in ("http", "grpc")))
    console.print(table)
    console.print(
        "labels identical raw vs defended: yes; raw outputs identical over HTTP and gRPC: "
        f"{'yes' if summary['http_grpc_raw_identical'] else 'NO'}; defended outputs identical for "
        f"{summary['http_grpc_defended_identical_share']:.1%} of rows (each protocol used its own client id,"
        " and adaptive intensity follows each client's query pattern). The defended rows were sent paced"
        f" (each request waited {PACE:g} round trips), as benign traffic; a full-speed caller keeps the"
        " server busy and is answered at a coarser level, towards calibrated label-only"
    )
    if "server_perturbed_share" in summary:
        m = summary["server_metrics"]
        console.print(
            f"server metrics (mia_defense): {int(m['veil_outputs_total'])} outputs, "
            f"{summary['server_perturbed_share']:.1%} perturbed,"
            f" {summary['server_mean_pgd_steps']:.2f} PGD steps"
            f" per perturbed row, {int(m['veil_budget_exhausted_total'])} budget exhaustions, mean risk"
            f" {m['veil_risk_before_mean']:.3f} -> {m['veil_risk_after_mean']:.3f}"
        )
    for ex in summary["examples"]:
        console.print(
            f"  [{'member' if ex['member'] else 'held-out'}] raw {ex['raw']} -> defended"
            f" {ex['defended']}  {ex['text'][:70]!r}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build-dir", default="build/sst2-minilm")
    p.add_argument("--rows", type=int, default=500, help="members and non-members each")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    console = Console()
    build = BuildDir(a.build_dir)
    if not build.exists():
        console.print(f"[red]{build.summary_file} not found: run ./veil.sh build first[/red]")
        return 2
    summary = run(build.root, rows=a.rows, data_dir=a.data_dir, console=console)
    build.report("demo.json").write_text(json.dumps(summary, indent=2))
    show(summary, console)
    console.print(f"written: {build.report('demo.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
