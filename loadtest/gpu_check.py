"""GPU check for a device machine without internet: the defense step on CUDA, defended against
undefended with the classifier on the GPU, then (if it fits) Triton.

    loadtest/gpu_check.sh prepare [--with-triton]   # here, on the CPU host: writes build/gpu-bundle/
    loadtest/gpu_check.sh run                       # on the device, with build/gpu-bundle carried along

Why a bundle: the device has Python 3.12, CUDA torch and transformers but no network, and at most
64 MiB travel with a call (the checkout included). The MiniLM ONNX file alone is 91 MB, so the host
computes the evaluation logits once (the defense step only ever sees logits) and ships them with the
defense artifact, the fine-tuned weights in float16 (about 45 MB), the tokenizer and some texts.

Stage 0: every variant on those logits on the CPU and twice on CUDA (labels, bit-identical
repeats, the selective variants' bytes equal to the CPU's). Stage 1: ``veil.loadtest.defense_bench``
on those logits, on CPU and CUDA. Stage 2:
``veil.loadtest.gpu_pipeline``, the defended and the undefended computation per request with the
classifier on the GPU, interleaved, and the served ratios projected from them. Stage 3
(``--with-triton``, only if it fits in 64 MiB, which it does not beside the weights) adds the
nvidia-pytriton wheel and times ``mia_defense`` (``nvidia`` platform, KIND_GPU, fed logits) against
``softmax`` in tritonserver; it runs only when the device's numpy is < 2 (the 2.51 python backend
needs it); otherwise it says why it was skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veil import wire
from veil.export.build_dir import BuildDir

CAP_BYTES = 64 * 2**20
SMALL_WHEELS = ("safetensors==0.8.0", "requests==2.34.2", "urllib3==2.8.0", "idna==3.20", "certifi==2026.10.19.post1")
PYTRITON = "nvidia-pytriton==0.7.0"


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _download(spec: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    for tag in ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_35_x86_64"):
        cmd += ["--platform", tag]
    cmd += ["-d", str(dest), spec]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)


def _classifier_fp16(build: BuildDir, dest: Path) -> None:
    """The fine-tuned model's config, tokenizer and weights, the weights stored in float16 (half the
    bytes; the device computes in float32 like the exported graph)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True)
    for f in build.hf.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("training"):
            shutil.copy2(f, dest / f.name)
    for f in build.hf.glob("*.safetensors"):
        tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(f).items()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, dest / f.name, metadata={"format": "pt"})


def _triton_repository(build: BuildDir, dest: Path) -> None:
    """``mia_defense`` (nvidia platform, fed logits: the ensemble layout) and ``softmax``, rendered by
    the spec like every served config."""
    import dataclasses

    from veil.model_repository.spec import describe, render
    from veil.model_repository.writer import MODEL_PY

    opts = dataclasses.replace(build.options(), defense_layout="ensemble", mode="benchmark", variants=("veil",))
    for model in describe(opts, "nvidia"):
        if model.name not in ("mia_defense", "softmax"):
            continue
        version = dest / model.name / "1"
        version.mkdir(parents=True)
        (dest / model.name / "config.pbtxt").write_text(render(model))
        (version / "model.py").write_text(MODEL_PY.format(module=model.adapter))
        if "defense" in model.assets:
            shutil.copytree(build.defense, version / "defense")


def prepare(bundle: Path, build_dir: Path, *, rows: int, with_triton: bool, wheels: bool = True) -> dict:
    """Host side: logits of the build's evaluation rows, the artifact, the float16 classifier, texts,
    wheels; checks the 64 MiB cap."""
    from veil.loadtest.defense_bench import eval_inputs

    if bundle.exists():
        shutil.rmtree(bundle)
    (bundle / "wheels").mkdir(parents=True)
    logits, signatures = eval_inputs(build_dir, rows)
    np.savez(bundle / "eval_inputs.npz", logits=logits.astype(np.float32), signatures=signatures)
    build = BuildDir(build_dir)
    shutil.copytree(build.defense, bundle / "defense")
    shutil.copy2(build.summary_file, bundle / "build.json")
    shutil.copy2(build.repository / "options.json", bundle / "options.json")
    _classifier_fp16(build, bundle / "classifier")
    (bundle / "texts.json").write_text(json.dumps(build.texts("nonmember_eval", limit=512)))
    for spec in SMALL_WHEELS if wheels else ():
        _download(spec, bundle / "wheels")
    notes = []
    if with_triton:
        _triton_repository(build, bundle / "repo")
        _download(PYTRITON, bundle / "wheels")
        if _size(bundle) > CAP_BYTES:
            for w in (bundle / "wheels").glob("nvidia_pytriton-*.whl"):
                w.unlink()
            shutil.rmtree(bundle / "repo")
            notes.append("nvidia-pytriton does not fit in 64 MiB next to the rest: stage 3 left out")
    manifest = {"build": str(build_dir), "rows": rows, "bytes": _size(bundle), "notes": notes}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


# --- device side -------------------------------------------------------------------------------


DETERMINISM_VARIANTS = ("veil", "fixed_intensity", "levelset", "pgd")


def determinism(bundle: Path, *, device: str) -> dict:
    """Stage 0: each variant on the bundled rows (threats spread over [0, 1]) on the CPU and twice on
    ``device``: the labels must be the raw argmax everywhere and a repeat on ``device`` bit-identical
    (a repeated query can average nothing away); the selective variants (numpy) must give the CPU's
    bytes exactly; the torch variants report how many rows differ from the CPU and by how much."""
    from veil.python_backend.artifact import DefenseArtifact
    from veil.python_backend.defense import Defense, DefenseConfig

    art = DefenseArtifact.load(bundle / "defense")
    data = np.load(bundle / "eval_inputs.npz")
    z, sig = data["logits"].astype(np.float32), data["signatures"]
    threat = np.linspace(0.0, 1.0, len(z))
    rows = {}
    for variant in DETERMINISM_VARIANTS:
        config = DefenseConfig(variant=variant)
        cpu = Defense(art, config=config, device="cpu")(z, threat=threat, signatures=sig)
        dev = [Defense(art, config=config, device=device)(z, threat=threat, signatures=sig) for _ in range(2)]
        same = (cpu.probabilities == dev[0].probabilities).all(1)
        selective_method = Defense(art, config=config).spec.method == "selective"
        row = {
            "labels_are_argmax": bool((dev[0].labels == z.argmax(1)).all() and (cpu.labels == z.argmax(1)).all()),
            "repeat_bit_identical": dev[0].probabilities.tobytes() == dev[1].probabilities.tobytes(),
            "rows_equal_to_cpu": float(same.mean()),
            "max_abs_diff_to_cpu": float(np.abs(cpu.probabilities - dev[0].probabilities).max()),
        }
        exact = bool(same.all()) or not selective_method
        row["ok"] = bool(row["labels_are_argmax"] and row["repeat_bit_identical"] and exact)
        rows[variant] = row
    return {"device": device, "rows": len(z), "variants": rows, "ok": all(r["ok"] for r in rows.values())}


def stage_determinism(bundle: Path) -> int:
    import torch

    if not torch.cuda.is_available():
        print("[gpu-check] stage 0 skipped: no CUDA device")
        return 0
    result = determinism(bundle, device="cuda")
    print("[gpu-check] determinism " + json.dumps(result))
    return 0 if result["ok"] else 1


def stage_defense_bench(bundle: Path, *, repeats: int) -> int:
    """``python -m veil.loadtest.defense_bench`` on the bundled inputs (CPU, and CUDA when present):
    the host computed logits and signatures, so the device needs neither transformers nor onnx."""
    from veil.loadtest import defense_bench

    inputs = bundle / "eval_inputs.npz"
    rows = len(np.load(inputs)["logits"])
    return defense_bench.main(
        ["--build-dir", str(bundle), "--inputs", str(inputs), "--rows", str(rows), "--repeats", str(repeats)]
    )


def _infer(url: str, model: str, z: np.ndarray) -> float:
    body = {
        "inputs": [{"name": wire.LOGITS, "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()}],
        "outputs": [{"name": wire.PROBABILITIES}],
    }
    req = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - t


def _compute_infer(url: str, model: str) -> tuple[int, int]:
    """Triton's cumulative (ns, requests) of compute_infer for one model."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as r:
        s = json.loads(r.read())["model_stats"][0]["inference_stats"]["compute_infer"]
    return int(s["ns"]), int(s["count"])


def stage_triton(bundle: Path, *, kind: str, requests_per_batch: int) -> int:
    """tritonserver with mia_defense (KIND_GPU as built) and softmax, timed over HTTP with logits."""
    if not (bundle / "repo").is_dir():
        print("[gpu-check] stage 3 skipped: bundle prepared without --with-triton (or it did not fit)")
        return 0
    if int(np.__version__.split(".")[0]) >= 2:
        print(f"[gpu-check] stage 3 skipped: numpy {np.__version__} here; Triton 2.51's python backend needs < 2")
        return 0
    # The launcher only needs pytriton's folder (binary, backend, stubs); importing the package would
    # pull its client stack (tritonclient, zmq, ...), which the device lacks. Register it unexecuted.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.origin:
        print("[gpu-check] stage 3 skipped: nvidia-pytriton is not unpacked here")
        return 0
    if "pytriton" not in sys.modules:
        shell = types.ModuleType("pytriton")
        shell.__file__ = spec.origin
        shell.__path__ = list(spec.submodule_search_locations or [])
        sys.modules["pytriton"] = shell
    try:
        from veil.serving.launcher import TritonServer
    except ImportError as exc:
        print(f"[gpu-check] stage 3 skipped: {exc}")
        return 0
    repo = Path("/tmp/veil-gpu-check-repo")
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(bundle / "repo", repo)
    if kind == "cpu":  # plumbing test on a host without a GPU
        cfg = repo / "mia_defense" / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace("KIND_GPU", "KIND_CPU"))
    logits = np.load(bundle / "eval_inputs.npz")["logits"]
    log = Path("/tmp/veil-gpu-check-tritonserver.log")
    t = time.perf_counter()
    with TritonServer([repo], log_file=log, startup_timeout=150) as server:
        print(f"[gpu-check] tritonserver ready in {time.perf_counter() - t:.1f}s (mia_defense on KIND_{kind.upper()})")
        print("| model | batch | client p50 ms | client p99 ms | server compute_infer µs/request (incl. warm-up) |")
        print("|---|---|---|---|---|")
        for batch in (1, 64):
            times: dict[str, list[float]] = {"softmax": [], "mia_defense": []}
            before = {m: _compute_infer(server.http_url, m) for m in times}
            for i in range(requests_per_batch + 5):
                start = (i * batch) % max(len(logits) - batch, 1)
                for model in ("softmax", "mia_defense") if i % 2 == 0 else ("mia_defense", "softmax"):
                    dt = _infer(server.http_url, model, logits[start : start + batch])
                    if i >= 5:  # warm-up
                        times[model].append(dt)
            for model, ts in times.items():
                q = statistics.quantiles(ts, n=100)
                ns, count = (a - b for a, b in zip(_compute_infer(server.http_url, model), before[model], strict=True))
                print(
                    f"| {model} | {batch} | {1e3 * statistics.median(ts):.3f} | {1e3 * q[98]:.3f} |"
                    f" {ns / max(count, 1) / 1e3:.0f} |"
                )
    return 0


def stage_pipeline(bundle: Path, *, hop_ms: float) -> int:
    """``python -m veil.loadtest.gpu_pipeline``: defended vs undefended with the classifier on the GPU."""
    from veil.loadtest import gpu_pipeline

    if not (bundle / "classifier").is_dir():
        print("[gpu-check] stage 2 skipped: the bundle has no classifier (prepare it again)")
        return 0
    return gpu_pipeline.main(["--bundle", str(bundle), "--hop-ms", str(hop_ms)])


def run(bundle: Path, *, repeats: int, kind: str, requests_per_batch: int, skip_triton: bool, hop_ms: float) -> int:
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "none"
    print(f"[gpu-check] python {sys.version.split()[0]}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"[gpu-check] CUDA available: {cuda} ({name}); bundle {json.loads((bundle / 'manifest.json').read_text())}")
    t = time.perf_counter()
    try:
        rc = stage_determinism(bundle)
    except Exception as exc:  # report, and go on to the timings
        print(f"[gpu-check] stage 0 failed: {type(exc).__name__}: {exc}")
        rc = 1
    print(f"[gpu-check] stage 0 (CPU against CUDA, repeats) done in {time.perf_counter() - t:.0f}s")
    t = time.perf_counter()
    rc = stage_defense_bench(bundle, repeats=repeats) or rc
    print(f"[gpu-check] stage 1 (defense step) done in {time.perf_counter() - t:.0f}s")
    t = time.perf_counter()
    try:
        rc = stage_pipeline(bundle, hop_ms=hop_ms) or rc
    except Exception as exc:  # report, do not hide stage 1's numbers
        print(f"[gpu-check] stage 2 failed: {type(exc).__name__}: {exc}")
        rc = rc or 1
    print(f"[gpu-check] stage 2 (defended vs undefended pipelines) done in {time.perf_counter() - t:.0f}s")
    if not skip_triton:
        try:
            rc = (
                stage_triton(
                    bundle,
                    kind=kind if kind != "auto" else ("gpu" if cuda else "cpu"),
                    requests_per_batch=requests_per_batch,
                )
                or rc
            )
        except Exception as exc:  # report, do not hide stage 1's numbers
            print(f"[gpu-check] stage 3 failed: {type(exc).__name__}: {exc}")
            rc = rc or 1
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare")
    pp.add_argument("--bundle", default="build/gpu-bundle")
    pp.add_argument("--build-dir", default="build/sst2-minilm")
    pp.add_argument("--rows", type=int, default=1024)
    pp.add_argument("--with-triton", action="store_true")
    pr = sub.add_parser("run")
    pr.add_argument("--bundle", default="build/gpu-bundle")
    pr.add_argument("--repeats", type=int, default=50)
    pr.add_argument("--kind", choices=("auto", "gpu", "cpu"), default="auto")
    pr.add_argument("--requests", type=int, default=200, help="timed requests per model and batch size (stage 3)")
    pr.add_argument("--skip-triton", action="store_true")
    pr.add_argument("--hop-ms", type=float, default=1.5, help="python-backend crossings per request (stage 2)")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        manifest = prepare(Path(a.bundle), Path(a.build_dir), rows=a.rows, with_triton=a.with_triton)
        print(json.dumps(manifest, indent=2))
        return 0 if manifest["bytes"] <= CAP_BYTES else 1
    return run(
        Path(a.bundle),
        repeats=a.repeats,
        kind=a.kind,
        requests_per_batch=a.requests,
        skip_triton=a.skip_triton,
        hop_ms=a.hop_ms,
    )


if __name__ == "__main__":
    sys.exit(main())
