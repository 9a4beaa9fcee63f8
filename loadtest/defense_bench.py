"""The defense step alone: time per batch, PGD steps, perturbation sizes, on CPU (and CUDA).

    python -m veil.loadtest.defense_bench --build-dir build/sst2-minilm

Uses the served classifier's logits on the held-out evaluation rows (members and non-members)
of the build, so the numbers describe the real model's outputs. Prints a table and writes
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

from veil.export.data import dedupe, load_dataset
from veil.export.pipeline import load_splits, onnx_logits
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.probabilities import softmax

BATCHES = (1, 8, 64, 256)


def eval_logits(build_dir: Path, rows: int) -> np.ndarray:
    info = json.loads((build_dir / "build.json").read_text())
    options = json.loads((build_dir / "model_repository" / "options.json").read_text())
    cfg = info["config"]
    ds = dedupe(load_dataset(cfg["dataset"], "train", data_dir=cfg["data_dir"]))
    splits = load_splits(build_dir)
    texts = splits.take(ds, "member_eval").texts[: rows // 2] + splits.take(ds, "nonmember_eval").texts[: rows // 2]
    return onnx_logits(
        build_dir / "model.onnx",
        build_dir / "hf",
        options["input_names"],
        texts,
        max_length=options["max_length"],
        progress=True,
    )


def time_batches(fn, logits: np.ndarray, batch: int, *, repeats: int, device: str) -> float:
    """Median seconds per call over ``repeats`` batches cycling through the logits."""
    n = len(logits)
    times = []
    for r in range(repeats + 3):
        start = (r * batch) % max(n - batch, 1)
        z = logits[start : start + batch]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(z)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if r >= 3:  # warm-up
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(build_dir: Path, *, rows: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    art = DefenseArtifact.load(build_dir / "defense")
    logits = eval_logits(build_dir, rows)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report: dict = {"rows": len(logits), "torch_threads": threads, "devices": {}}
    # The served closed form (exact for two classes, the canonical point for more), then the
    # iterative PGD it replaces.
    modes = [(d, True) for d in devices] + [(d, False) for d in devices]
    for device, closed in modes:
        config = DefenseConfig(variant="fixed_intensity", closed_form_binary=closed, canonical_multiclass=closed)
        defense = Defense(art, config=config, device=device)
        name = device if closed else f"{device}, iterative PGD"
        full = defense(logits)
        moved = full.perturbed
        steps = full.steps[moved]
        entry = {
            "perturbed_share": float(moved.mean()),
            "exhausted_share_of_perturbed": float(full.exhausted[moved].mean()) if moved.any() else 0.0,
            "pgd_steps_median": float(np.median(steps)) if moved.any() else 0.0,
            "pgd_steps_p99": float(np.percentile(steps, 99)) if moved.any() else 0.0,
            "pgd_steps_max": int(steps.max()) if moved.any() else 0,
            "steps_histogram": {int(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True), strict=True)},
            "mean_abs_delta": float(full.delta_abs[moved].mean()) if moved.any() else 0.0,
            "max_abs_delta": float(full.delta_max[moved].max()) if moved.any() else 0.0,
            "risk_before_mean": float(full.risk_before.mean()),
            "risk_after_mean": float(full.risk_after.mean()),
            "ms_per_batch": {},
            "ms_per_batch_softmax_only": {},
        }
        for b in BATCHES:
            entry["ms_per_batch"][b] = 1e3 * time_batches(defense, logits, b, repeats=repeats, device=device)
            entry["ms_per_batch_softmax_only"][b] = 1e3 * time_batches(
                softmax, logits, b, repeats=repeats, device="cpu"
            )
        report["devices"][name] = entry
    report["risk_auc_calibration_holdout"] = art.metrics.get("risk_auc_holdout")
    report["tau_per_class"] = art.tau
    return report


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
    cpu = report["devices"]["cpu"]
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
    a = p.parse_args(argv)
    build_dir = Path(a.build_dir)
    report = bench(build_dir, rows=a.rows, repeats=a.repeats, threads=a.threads)
    md = to_markdown(report)
    (build_dir / "defense_bench.json").write_text(json.dumps(report, indent=2))
    (build_dir / "defense_bench.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
