"""Defended against undefended in one process, on a GPU: the served steps without the server.

    python -m veil.loadtest.gpu_pipeline --bundle build/gpu-bundle [--device cuda] [--hop-ms 1.5]

The device machine of this workplace has CUDA torch and numpy 2 but no tritonserver that can run
there (Triton 2.51's python backend needs numpy < 2), so the served ensembles cannot be load-tested
on it. What can be measured is what each ensemble computes per request, with the classifier on the
GPU: ``undefended`` is tokenizer -> classifier -> softmax and argmax on the device (the baseline's
graph), ``defended`` is tokenizer -> classifier -> logits to the host -> the defense step exactly as
``mia_defense`` runs it (logit check, adaptive threat, :class:`Defense`). Both pipelines run
interleaved (ABBA) at batch 1 (latency) and batch 64 (throughput). In the hosted layout both served
ensembles cross the same python-backend boundaries, so the served ratio is projected by adding the
per-request cost of those crossings (``--hop-ms``, measured by ``veil.loadtest.runner`` on the CPU
host) to both sides; docs/load-testing.md gives the projection's assumptions.

The classifier is the build's fine-tuned model run by torch (weights carried in float16, computed in
float32 like the exported ONNX graph); NVIDIA's server would run the same network with onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from veil.python_backend.adaptive import AdaptiveConfig, ThreatTracker
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.tokens import TextEncoder
from veil.wire import FINGERPRINT, SEQUENCE

BATCHES = (1, 64)


def pipelines(bundle: Path, device: str) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """The two per-request computations, each returning the served probabilities."""
    from transformers import AutoModelForSequenceClassification

    options = json.loads((bundle / "options.json").read_text())
    names = list(options["input_names"])
    encoder = TextEncoder(bundle / "classifier", input_names=names, max_length=int(options["max_length"]))
    model = AutoModelForSequenceClassification.from_pretrained(str(bundle / "classifier"))
    model.float().eval().to(device)  # float16 on disk (transformers 5 keeps the stored dtype), float32 here
    defense = Defense(DefenseArtifact.load(bundle / "defense"), config=DefenseConfig(variant="veil"), device=device)
    tracker = ThreatTracker(AdaptiveConfig())

    def logits_of(tensors: dict[str, np.ndarray]) -> torch.Tensor:
        feed = {n: torch.from_numpy(tensors[n]).to(device, non_blocking=True) for n in names}
        with torch.inference_mode():
            return model(**feed).logits

    def undefended(texts: list[str]) -> np.ndarray:
        z = logits_of(encoder(texts))
        probs, label = torch.softmax(z, dim=-1).cpu().numpy(), z.argmax(-1, keepdim=True).cpu().numpy()
        assert label.shape == (len(texts), 1)  # both served tensors reach the host
        return probs

    def defended(texts: list[str]) -> np.ndarray:
        tensors = encoder(texts)
        z = logits_of(tensors).float().cpu().numpy()
        defense.check(z)
        threat = tracker.observe("gpu-check", z, tensors[FINGERPRINT])
        return defense(
            z,
            threat=np.full(len(z), threat),
            signatures=tensors[FINGERPRINT],
            sequences=tensors[SEQUENCE][:, 0],
            checked=True,
        ).probabilities

    return {"undefended": undefended, "defended": defended}


def measure(fns: dict[str, Callable], texts: list[str], *, batch: int, repeats: int, device: str) -> dict:
    """Seconds per call of each pipeline, interleaved (forwards, then backwards) after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats + 5):
        start = (r * batch) % max(len(texts) - batch, 1)
        chunk = texts[start : start + batch]
        for name in order if r % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            fns[name](chunk)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r >= 5:
                times[name].append(time.perf_counter() - t)
    return times


def summary(times: dict[str, list[float]], *, batch: int, hop_ms: float) -> dict:
    def stats(ts: list[float]) -> dict:
        return {
            "p50_ms": 1e3 * statistics.median(ts),
            "p99_ms": 1e3 * float(np.percentile(ts, 99)),
            "rows_per_s": batch / statistics.mean(ts),
        }

    u, d = stats(times["undefended"]), stats(times["defended"])
    ratio = {"p50": d["p50_ms"] / u["p50_ms"], "p99": d["p99_ms"] / u["p99_ms"]}
    ratio["throughput"] = d["rows_per_s"] / u["rows_per_s"]
    projected = {k: (hop_ms + d[f"{k}_ms"]) / (hop_ms + u[f"{k}_ms"]) for k in ("p50", "p99")}
    return {"batch": batch, "undefended": u, "defended": d, "ratio": ratio, "projected": projected}


def to_markdown(rows: Sequence[dict], *, device: str, hop_ms: float) -> str:
    lines = [
        f"In-process pipelines on {device} (classifier on the device, the defense step as mia_defense runs it);"
        f" projected served ratios add {hop_ms:g} ms of python-backend crossings per request to both sides.",
        "",
        "| batch | p50 undefended / defended ms | p99 ms | rows/s | p50 ratio | p99 ratio | throughput ratio"
        " | projected served p50 ratio | projected p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        u, d, q, p = r["undefended"], r["defended"], r["ratio"], r["projected"]
        lines.append(
            f"| {r['batch']} | {u['p50_ms']:.3f} / {d['p50_ms']:.3f} | {u['p99_ms']:.3f} / {d['p99_ms']:.3f}"
            f" | {u['rows_per_s']:.0f} / {d['rows_per_s']:.0f} | {q['p50']:.3f} | {q['p99']:.3f}"
            f" | {q['throughput']:.3f} | {p['p50']:.3f} | {p['p99']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="build/gpu-bundle")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--hop-ms", type=float, default=1.5, help="python-backend crossings per request, both sides")
    a = p.parse_args(argv)
    bundle = Path(a.bundle)
    texts = json.loads((bundle / "texts.json").read_text())
    torch.set_num_threads(1)
    fns = pipelines(bundle, a.device)
    rows = []
    for batch in BATCHES:
        times = measure(
            fns, texts, batch=batch, repeats=a.repeats if batch == 1 else max(a.repeats // 4, 10), device=a.device
        )
        rows.append(summary(times, batch=batch, hop_ms=a.hop_ms))
    print(to_markdown(rows, device=a.device, hop_ms=a.hop_ms))
    print(json.dumps({"device": a.device, "hop_ms": a.hop_ms, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
