"""The defense step alone: time per batch, PGD steps, perturbation sizes, on CPU (and CUDA).

    python -m veil.loadtest.defense_bench --build-dir build/sst2-minilm
    python -m veil.loadtest.defense_bench --state      # the adaptive-state step: in-process vs Redis
    python -m veil.loadtest.defense_bench --membership --build-dir B   # training texts vs non-members

Uses the served classifier's logits (and the tokenizer's signatures) on the held-out evaluation
rows (members and non-members) of the build, so the numbers describe the real model's outputs. Prints a table and writes
``defense_bench.json`` / ``.md`` into the build folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from veil.export.build_dir import BuildDir
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.probabilities import softmax

BATCHES = (1, 8, 64, 256)


def eval_inputs(build_dir: Path, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and query signatures of the build's evaluation rows (half members, half not)."""
    from veil.export.pipeline import onnx_logits, text_signatures

    build = BuildDir(build_dir)
    options = build.options()
    names = list(options.input_names)
    texts, _ = build.labelled("member_eval", "nonmember_eval", limit=rows // 2)
    logits = onnx_logits(build.onnx, build.hf, names, texts, max_length=options.max_length, progress=True)
    return logits, text_signatures(build.hf, names, texts, max_length=options.max_length)


def time_batches(fn, n: int, batch: int, *, repeats: int, device: str) -> float:
    """Median seconds per ``fn(start, stop)`` call over ``repeats`` batches cycling through n rows."""
    times = []
    for r in range(repeats + 3):
        start = (r * batch) % max(n - batch, 1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(start, start + batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if r >= 3:  # warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


SERVED = ("veil", "levelset", "pgd")
"""The product (selective), the first round's closed-form level set, and the paper's iterative PGD."""


def bench(
    build_dir: Path,
    *,
    rows: int,
    repeats: int,
    threads: int,
    inputs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    torch.set_num_threads(threads)
    art = DefenseArtifact.load(BuildDir(build_dir).defense)
    logits, sigs = inputs if inputs is not None else eval_inputs(build_dir, rows)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict = {"rows": len(logits), "torch_threads": threads, "devices": {}}
    for variant in SERVED:
        if variant == "veil" and art.selective is None:
            continue
        for device in devices:
            defense = Defense(art, config=DefenseConfig(variant=variant), device=device)
            name = f"{variant}, {device}"
            full = defense(logits, signatures=sigs)
            moved = full.perturbed
            steps = full.steps[moved]
            entry = {
                "perturbed_share": float(moved.mean()),
                "exhausted_share_of_perturbed": float(full.exhausted[moved].mean()) if moved.any() else 0.0,
                "pgd_steps_median": float(np.median(steps)) if moved.any() else 0.0,
                "pgd_steps_p99": float(np.percentile(steps, 99)) if moved.any() else 0.0,
                "pgd_steps_max": int(steps.max()) if moved.any() else 0,
                "mean_abs_delta": float(full.delta_abs[moved].mean()) if moved.any() else 0.0,
                "max_abs_delta": float(full.delta_max[moved].max()) if moved.any() else 0.0,
                "ms_per_batch": {},
                "ms_per_batch_softmax_only": {},
            }
            for b in BATCHES:
                entry["ms_per_batch"][b] = 1e3 * time_batches(
                    lambda i, j, d=defense: d(logits[i:j], signatures=sigs[i:j]),
                    len(logits),
                    b,
                    repeats=repeats,
                    device=device,
                )
                entry["ms_per_batch_softmax_only"][b] = 1e3 * time_batches(
                    lambda i, j: softmax(logits[i:j]), len(logits), b, repeats=repeats, device="cpu"
                )
            report["devices"][name] = entry
    report["risk_auc_calibration_holdout"] = art.metrics.get("risk_auc_holdout")
    report["tau_per_class"] = art.tau
    return report


def cache_effect(build_dir: Path, *, repeats: int) -> dict[str, float]:
    """CPU ms (``time.thread_time``) of the served step for one row (logit check, threat, defense),
    run warm (right after itself), right after a classifier run (which streams the ONNX weights
    through the caches, as in the hosted ``mia_defense``), and after a 3 ms sleep."""
    from veil.python_backend.adaptive import AdaptiveConfig, ThreatTracker
    from veil.python_backend.onnx_classifier import OnnxClassifier
    from veil.python_backend.tokens import TextEncoder
    from veil.wire import FINGERPRINT

    build = BuildDir(build_dir)
    options = build.options()
    defense = Defense(DefenseArtifact.load(build.defense), config=DefenseConfig(variant="veil"))
    tracker = ThreatTracker(AdaptiveConfig())
    session = OnnxClassifier(build.onnx, threads=1, spin=False)
    encoder = TextEncoder(build.hf, input_names=options.input_names, max_length=options.max_length)
    feeds = [encoder([t]) for t in build.texts("nonmember_eval", limit=200)]
    logits = [session(f) for f in feeds]

    def step(i: int) -> float:
        t = time.thread_time()
        z, sig = logits[i], feeds[i][FINGERPRINT]
        defense.check(z)
        threat = tracker.observe(f"user{i % 8}", z, sig)
        defense(z, threat=np.full(1, threat), signatures=sig, checked=True)
        return time.thread_time() - t

    times: dict[str, list[float]] = {"warm": [], "after_classifier": [], "after_sleep": []}
    for r in range(repeats + 10):
        i = r % len(feeds)
        warm = step(i)
        session(feeds[i])
        cold = step(i)
        time.sleep(0.003)
        slept = step(i)
        if r >= 10:
            for k, v in zip(times, (warm, cold, slept), strict=True):
                times[k].append(v)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def membership_gap(build_dir: Path, *, rows: int, repeats: int) -> dict[str, float]:
    """The selective defense step on one row at a time, as served (signatures and sequence hashes):
    training texts (``member_eval``) against non-members, interleaved, each row ``repeats`` times.
    Per side the median of the rows' median times (µs), and the AUC of a row's median time as a
    membership score: the step's own timing channel, without the server's noise around it."""
    from sklearn.metrics import roc_auc_score

    from veil.export.pipeline import onnx_logits
    from veil.loadtest.timing import interleave
    from veil.python_backend.tokens import text_fingerprints

    build = BuildDir(build_dir)
    options = build.options()
    names = list(options.input_names)
    texts, member = interleave(build.texts("member_eval", limit=rows), build.texts("nonmember_eval", limit=rows))
    logits = onnx_logits(build.onnx, build.hf, names, texts, max_length=options.max_length, progress=False)
    sig, seq = text_fingerprints(build.hf, names, texts, max_length=options.max_length)
    defense = Defense(DefenseArtifact.load(build.defense), config=DefenseConfig(variant="veil"))
    times = np.zeros((repeats, len(texts)))
    for r in range(-1, repeats):  # one round of warm-up
        for i in range(len(texts)):
            t = time.perf_counter()
            defense(logits[i : i + 1], threat=np.zeros(1), signatures=sig[i : i + 1], sequences=seq[i : i + 1])
            if r >= 0:
                times[r, i] = time.perf_counter() - t
    per_row = np.median(times, 0) * 1e6
    m, o = float(np.median(per_row[member])), float(np.median(per_row[~member]))
    return {"members_us": m, "nonmembers_us": o, "gap_us": m - o, "auc": float(roc_auc_score(member, per_row))}


def to_markdown(report: dict) -> str:
    lines = [f"Defense step on {report['rows']} evaluation outputs (torch threads: {report['torch_threads']}).", ""]
    lines.append(
        "| device | perturbed | PGD steps median / p99 / max | exhausted | mean / max abs delta |"
        + "".join(f" ms @{b} |" for b in BATCHES)
    )
    lines.append("|---|---|---|---|---|" + "---|" * len(BATCHES))
    for device, e in report["devices"].items():
        lines.append(
            f"| {device} | {e['perturbed_share']:.1%} | {e['pgd_steps_median']:.0f} / {e['pgd_steps_p99']:.0f} /"
            f" {e['pgd_steps_max']} | {e['exhausted_share_of_perturbed']:.2%} |"
            f" {e['mean_abs_delta']:.3f} / {e['max_abs_delta']:.3f} |"
            + "".join(f" {e['ms_per_batch'][b]:.2f} |" for b in BATCHES)
        )
    cpu = next(iter(report["devices"].values()))
    lines.append(
        "| softmax only (raw step) | | | | |"
        + "".join(f" {cpu['ms_per_batch_softmax_only'][b]:.3f} |" for b in BATCHES)
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build/sst2-minilm")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the served model uses 1)")
    p.add_argument("--inputs", default=None, help="an .npz with logits and signatures computed elsewhere")
    p.add_argument(
        "--state", action="store_true", help="time the adaptive-state step instead (loadtest/state_bench.py)"
    )
    p.add_argument(
        "--cache-effect", action="store_true", help="only: the served step's CPU time warm vs after a classifier run"
    )
    p.add_argument(
        "--membership",
        action="store_true",
        help="only: the step's time on training texts vs non-members, one row at a time (timing channel)",
    )
    a = p.parse_args(argv)
    if a.state:
        from veil.loadtest.state_bench import main as state_main

        return state_main([])
    build_dir = Path(a.build_dir)
    if a.membership:
        torch.set_num_threads(a.threads)
        gap = membership_gap(build_dir, rows=a.rows, repeats=a.repeats)
        print("| training texts µs | non-members µs | gap µs | AUC of a row's median time |\n|---|---|---|---|")
        print(f"| {gap['members_us']:.1f} | {gap['nonmembers_us']:.1f} | {gap['gap_us']:+.1f} | {gap['auc']:.3f} |")
        return 0
    if a.cache_effect:
        torch.set_num_threads(a.threads)
        ms = cache_effect(build_dir, repeats=a.repeats)
        print("| served step, 1 row, CPU ms | " + " | ".join(ms) + " |\n|---|" + "---|" * len(ms))
        print("| median | " + " | ".join(f"{v:.3f}" for v in ms.values()) + " |")
        return 0
    inputs = None
    if a.inputs:
        data = np.load(a.inputs)
        inputs = (data["logits"][: a.rows], data["signatures"][: a.rows])
    report = bench(build_dir, rows=a.rows, repeats=a.repeats, threads=a.threads, inputs=inputs)
    md = to_markdown(report)
    BuildDir(build_dir).report("defense_bench.json").write_text(json.dumps(report, indent=2))
    BuildDir(build_dir).report("defense_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
