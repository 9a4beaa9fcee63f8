"""Paired A/B at one user: one client alternates the ensembles request by request.

    python -m veil.loadtest.ab --build-dir build/sst2-minilm [--serving defense_layout=ensemble]

The runner's rounds last seconds, so on a shared machine another job's burst can land on one
ensemble's round and not the other's; at concurrency 1 the defense's cost (a fraction of a
millisecond) is smaller than that noise. Here one closed-loop gRPC client sends each text to every
ensemble in turn (forwards, then backwards: ABC CBA), so each pair of samples is milliseconds
apart and drift cancels at the finest grain. It reports p50/p90/p99 per ensemble, the ratios
against the first (the undefended baseline) and the median of the per-request paired ratios.
Starts the embedded server like the runner (``--serving`` rewrites the build's repository first).
No Locust here (it patches the interpreter for gevent on import), so tests can import this module.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from veil import wire
from veil.export.build_dir import BuildDir
from veil.loadtest.config import DEFENDED, RAW, UNDEFENDED, RunConfig, add_serving_option, parsed_serving
from veil.loadtest.server import serving


def run(grpc_url: str, models: Sequence[str], texts: Sequence[str], *, requests: int, warmup: int) -> dict:
    """Seconds per request of each model, in paired order, after ``warmup`` rounds."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    times: dict[str, list[float]] = {m: [] for m in models}
    for i in range(requests + warmup):
        data = np.array([[texts[i % len(texts)].encode()]], dtype=object)
        for model in models if i % 2 == 0 else models[::-1]:
            inp = grpcclient.InferInput(wire.TEXT, list(data.shape), "BYTES")
            inp.set_data_from_numpy(data)
            t = time.perf_counter()
            client.infer(model, [inp])
            if i >= warmup:
                times[model].append(time.perf_counter() - t)
    client.close()
    return times


def summarize(times: dict[str, list[float]]) -> dict:
    models = list(times)
    base = np.asarray(times[models[0]])
    out = {}
    for m in models:
        t = np.asarray(times[m]) * 1e3
        p50, p90, p99 = np.percentile(t, [50, 90, 99])
        out[m] = {"requests": len(t), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(t.mean())}
        b = np.percentile(base * 1e3, [50, 90, 99])
        out[m]["ratio"] = {"p50": p50 / b[0], "p90": p90 / b[1], "p99": p99 / b[2]}
        out[m]["paired_median_ratio"] = float(np.median(np.asarray(times[m]) / base))
    return out


def to_markdown(summary: dict, *, note: str) -> str:
    first = next(iter(summary))
    lines = [
        f"Paired A/B, one gRPC client, models alternating per request{note}; ratios against {first}.",
        "",
        "| model | requests | p50 ms | p90 ms | p99 ms | p50 ratio | p90 ratio | p99 ratio | median paired ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary.items():
        r = s["ratio"]
        lines.append(
            f"| {m} | {s['requests']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f}"
            f" | {r['p50']:.3f} | {r['p90']:.3f} | {r['p99']:.3f} | {s['paired_median_ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build/sst2-minilm")
    p.add_argument("--out", default=None, help="folder for ab.json / ab.md (default <build>/loadtest-ab)")
    p.add_argument("--models", default=f"{UNDEFENDED},{RAW},{DEFENDED}", help="comma-separated, baseline first")
    p.add_argument("--requests", type=int, default=1000, help="timed requests per model")
    p.add_argument("--warmup", type=int, default=50)
    add_serving_option(p)
    a = p.parse_args(argv)
    changes = parsed_serving(p, a.serving)
    out = Path(a.out or Path(a.build_dir) / "loadtest-ab")
    cfg = RunConfig(build_dir=a.build_dir, out_dir=str(out), serving=changes)
    models = [m for m in a.models.split(",") if m]
    texts = BuildDir(a.build_dir).texts("nonmember_eval", limit=1500)
    with serving(cfg, Console()) as (grpc_url, _http, _metrics, _pid):
        times = run(grpc_url, models, texts, requests=a.requests, warmup=a.warmup)
    summary = summarize(times)
    note = f" (repository rewritten with {changes})" if changes else ""
    md = to_markdown(summary, note=note)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps({"serving": changes, "summary": summary}, indent=2))
    (out / "ab.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
