"""Timing side channel: does the served endpoint answer a training text slower than a non-member?

    python -m veil.loadtest.timing --build-dir build/privacy/agnews-minilm/seed12/target

The defense must not leak membership through anything a caller observes, and latency is
observable. One closed-loop gRPC client sends training texts (``member_eval``) and non-members
(``nonmember_eval``) interleaved, one row a request, each to every model in turn (as
:mod:`veil.loadtest.ab` does, so drift cancels), and reports per model the median latency of
each side and the AUC of latency as a membership score (0.5: nothing to read). Built for the
leave-out part models, which run a forward pass on gated rows only (docs/evaluation.md, "Part
models for whole matches"); it reads the served maps too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from sklearn.metrics import roc_auc_score

from veil.export.build_dir import BuildDir
from veil.loadtest.ab import run
from veil.loadtest.config import DEFENDED, RAW, RunConfig
from veil.loadtest.server import serving


def interleave(members: Sequence[str], nonmembers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Member, non-member, member, ...: the texts and whether each is a member."""
    n = min(len(members), len(nonmembers))
    texts = [t for pair in zip(members[:n], nonmembers[:n], strict=True) for t in pair]
    return texts, np.tile([True, False], n)


def timing_summary(times: dict[str, list[float]], member: np.ndarray, *, warmup: int) -> dict:
    """Per model: median ms of members and non-members, their ratio, and latency's membership AUC.
    ``times[m][j]`` is request ``warmup + j`` of the cycle over ``member``."""
    out = {}
    for model, t in times.items():
        ms = np.asarray(t) * 1e3
        is_member = member[(warmup + np.arange(len(ms))) % len(member)]
        m, n = np.median(ms[is_member]), np.median(ms[~is_member])
        out[model] = {
            "requests": len(ms),
            "member_p50_ms": float(m),
            "nonmember_p50_ms": float(n),
            "member_over_nonmember": float(m / n),
            "latency_auc": float(roc_auc_score(is_member, ms)),
        }
    return out


def to_markdown(summary: dict) -> str:
    lines = [
        "Latency of training texts against non-members, one gRPC client, one row a request, models alternating.",
        "",
        "| model | requests | members p50 ms | non-members p50 ms | ratio | latency AUC (membership) |",
        "|---|---|---|---|---|---|",
    ]
    for model, s in summary.items():
        lines.append(
            f"| {model} | {s['requests']} | {s['member_p50_ms']:.2f} | {s['nonmember_p50_ms']:.2f}"
            f" | {s['member_over_nonmember']:.3f} | {s['latency_auc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", required=True)
    p.add_argument("--out", default=None, help="folder for timing.json / timing.md (default <build>/loadtest-timing)")
    p.add_argument("--models", default=f"{RAW},{DEFENDED}", help="comma-separated")
    p.add_argument("--rows", type=int, default=200, help="texts per side")
    p.add_argument("--warmup", type=int, default=20, help="even, so the cycle stays aligned")
    a = p.parse_args(argv)
    if a.warmup % 2:
        p.error("--warmup must be even")
    build = BuildDir(a.build_dir)
    texts, member = interleave(build.texts("member_eval", limit=a.rows), build.texts("nonmember_eval", limit=a.rows))
    out = Path(a.out or Path(a.build_dir) / "loadtest-timing")
    cfg = RunConfig(build_dir=a.build_dir, out_dir=str(out))
    models = [m for m in a.models.split(",") if m]
    with serving(cfg, Console()) as (grpc_url, _http, _metrics, _pid):
        times = run(grpc_url, models, texts, requests=len(texts), warmup=a.warmup)
    summary = timing_summary(times, member, warmup=a.warmup)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps(summary, indent=2))
    md = to_markdown(summary)
    (out / "timing.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
