"""Timing side channel: does the served endpoint answer a training text slower than a non-member?

    python -m veil.loadtest.timing --build-dir build/privacy/agnews-minilm/seed12/target

The defense must not leak membership through anything a caller observes, and latency is
observable. One closed-loop gRPC client sends training texts (``member_eval``) and non-members
(``nonmember_eval``) interleaved, one row a request, each to every model in turn (as
:mod:`veil.loadtest.ab` does, so drift cancels; :func:`interleave` balances which goes first), and
reports per model the median latency of each side and the AUC of latency as a membership score
(0.5: nothing to read). With ``--repeats k`` every text is sent k times and the AUC of each text's
median latency is reported too: an attacker who repeats a query averages the noise away, so a
small gap shows there. Built for the leave-out part models, which run a forward pass on gated
rows only (docs/evaluation.md, "Part models for whole matches"); it reads the served maps too.
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
from veil.loadtest.config import DEFENDED, RAW, RunConfig, add_serving_option, parsed_serving
from veil.loadtest.server import serving


def interleave(members: Sequence[str], nonmembers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Member, non-member, non-member, member, ...: the texts and whether each is a member. The
    client alternates which model goes first from one text to the next (:func:`veil.loadtest.ab.run`),
    and going first or second moves a request's latency by ~0.1 ms: with plain alternation every
    member went second to the defended model and every non-member first, which read as a membership
    signal (latency AUC 0.55-0.61 on SST-2, `veil_raw` 0.47-0.49 the other way). In blocks of four
    each side is first as often as second."""
    n = min(len(members), len(nonmembers))
    texts: list[str] = []
    for i in range(n):
        pair = (members[i], nonmembers[i])
        texts.extend(pair if i % 2 == 0 else pair[::-1])
    member = np.array([(j % 4) in (0, 3) for j in range(2 * n)], dtype=bool)
    return texts, member


def timing_summary(times: dict[str, list[float]], member: np.ndarray, *, warmup: int) -> dict:
    """Per model: median ms of members and non-members, their ratio, and latency's membership AUC;
    where every text was sent at least twice, also the AUC of each text's median latency.
    ``times[m][j]`` is request ``warmup + j`` of the cycle over ``member``."""
    out = {}
    for model, t in times.items():
        ms = np.asarray(t) * 1e3
        text = (warmup + np.arange(len(ms))) % len(member)
        is_member = member[text]
        m, n = np.median(ms[is_member]), np.median(ms[~is_member])
        out[model] = {
            "requests": len(ms),
            "member_p50_ms": float(m),
            "nonmember_p50_ms": float(n),
            "member_over_nonmember": float(m / n),
            "latency_auc": float(roc_auc_score(is_member, ms)),
        }
        if len(ms) >= 2 * len(member):  # each text's median over its repeats
            per_text = np.array([np.median(ms[text == i]) for i in range(len(member))])
            out[model]["repeats"] = len(ms) // len(member)
            out[model]["median_of_repeats_auc"] = float(roc_auc_score(member, per_text))
    return out


def latency_attack(
    grpc_url: str,
    models: Sequence[str],
    members: Sequence[str],
    nonmembers: Sequence[str],
    *,
    repeats: int = 1,
    warmup: int = 20,
) -> dict:
    """The timing attack on a running server: :func:`interleave` the texts, send each ``repeats``
    times to every model (paired, order balanced), :func:`timing_summary`."""
    texts, member = interleave(members, nonmembers)
    times = run(grpc_url, list(models), texts, requests=repeats * len(texts), warmup=warmup)
    return timing_summary(times, member, warmup=warmup)


def to_markdown(summary: dict) -> str:
    lines = [
        "Latency of training texts against non-members, one gRPC client, one row a request, models alternating.",
        "",
        "| model | requests | members p50 ms | non-members p50 ms | ratio | latency AUC (membership) |"
        " AUC of each text's median |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, s in summary.items():
        repeated = f"{s['median_of_repeats_auc']:.3f} ({s['repeats']} each)" if "repeats" in s else "-"
        lines.append(
            f"| {model} | {s['requests']} | {s['member_p50_ms']:.2f} | {s['nonmember_p50_ms']:.2f}"
            f" | {s['member_over_nonmember']:.3f} | {s['latency_auc']:.3f} | {repeated} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", required=True)
    p.add_argument("--out", default=None, help="folder for timing.json / timing.md (default <build>/loadtest-timing)")
    p.add_argument("--models", default=f"{RAW},{DEFENDED}", help="comma-separated")
    p.add_argument("--rows", type=int, default=200, help="texts per side")
    p.add_argument("--warmup", type=int, default=20, help="even, so the cycle stays aligned")
    p.add_argument("--repeats", type=int, default=1, help="times each text is sent (k > 1: per-text medians too)")
    add_serving_option(p)
    a = p.parse_args(argv)
    if a.warmup % 2:
        p.error("--warmup must be even")
    changes = parsed_serving(p, a.serving)
    build = BuildDir(a.build_dir)
    members, nonmembers = build.texts("member_eval", limit=a.rows), build.texts("nonmember_eval", limit=a.rows)
    out = Path(a.out or Path(a.build_dir) / "loadtest-timing")
    cfg = RunConfig(build_dir=a.build_dir, out_dir=str(out), serving=changes)
    models = [m for m in a.models.split(",") if m]
    with serving(cfg, Console()) as (grpc_url, _http, _metrics, _pid):
        summary = latency_attack(grpc_url, models, members, nonmembers, repeats=a.repeats, warmup=a.warmup)
    out.mkdir(parents=True, exist_ok=True)
    (out / "timing.json").write_text(json.dumps(summary, indent=2))
    md = to_markdown(summary)
    (out / "timing.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
