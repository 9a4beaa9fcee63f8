"""The server under test, seen from the load generator: start or reach it, and read what it reports.

Triton's statistics (per-phase counters of every model), the composing steps of an ensemble,
Veil's defense counters and the server's CPU time. Plain ``requests`` and ``psutil``: no gevent,
so nothing here patches the process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import requests
from rich.console import Console

from veil.export.build_dir import BuildDir
from veil.loadtest.config import RAW, STAT_FIELDS, RunConfig
from veil.wire import METRICS_FLUSH_S

CLIENT_ID_FORWARDING = ["--http-header-forward-pattern=veil-client-id", "--grpc-header-forward-pattern=veil-client-id"]


def model_stats(http_url: str) -> dict[str, dict[str, int]]:
    """Cumulative counters of every model: request counts and ns per phase, executions, inferences."""
    body = requests.get(f"http://{http_url}/v2/models/stats", timeout=10).json()
    out = {}
    for m in body.get("model_stats", []):
        s = m["inference_stats"]
        entry = {"executions": int(m.get("execution_count", 0)), "inferences": int(m.get("inference_count", 0))}
        for name in STAT_FIELDS:
            entry[f"{name}_count"] = int(s[name]["count"])
            entry[f"{name}_ns"] = int(s[name]["ns"])
        out[m["name"]] = entry
    return out


def ensemble_steps(http_url: str, ensemble: str) -> list[str]:
    """Composing models of an ensemble, in order, from its served config."""
    r = requests.get(f"http://{http_url}/v2/models/{ensemble}/config", timeout=10)
    if r.status_code != 200:
        raise RuntimeError(
            f"model {ensemble!r} is not served ({r.status_code}): {RAW} exists only in a benchmark-mode build,"
            " see docs/deployment.md (The model repository) and docs/load-testing.md"
        )
    steps = r.json().get("ensemble_scheduling", {}).get("step", [])
    return [s["model_name"] for s in steps]


def defense_counters(metrics_url: str | None, model: str) -> dict[str, float]:
    """Veil's own counters of the defense model (outputs, perturbed, PGD steps), for context."""
    if not metrics_url:
        return {}
    time.sleep(2 * METRICS_FLUSH_S)  # the defense step batches its metric updates
    try:
        text = requests.get(metrics_url, timeout=5).text
    except requests.RequestException:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("veil_") and f'model="{model}"' in line and "_total" in line.split("{")[0]:
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = out.get(name.split("{")[0], 0.0) + float(value)
    return out


def process_cpu(pid: int | None) -> float:
    """CPU seconds used so far by a process and its children (tritonserver's python stubs)."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


@contextmanager
def serving(cfg: RunConfig, console: Console) -> Iterator[tuple[str, str, str | None, int | None]]:
    """(grpc_url, http_url, metrics_url, server pid): the given server, or an embedded one for this run."""
    if cfg.grpc_url or cfg.http_url:
        if not (cfg.grpc_url and cfg.http_url):
            raise SystemExit("--grpc-url and --http-url go together (statistics are read over HTTP)")
        yield cfg.grpc_url, cfg.http_url, cfg.metrics_url, None
        return
    from veil.serving.launcher import TritonServer, repositories_for

    out = cfg.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    repo = BuildDir(cfg.build_dir).repository
    from veil.model_repository.writer import rewrite_repository, stale_models

    stale = [] if cfg.serving else stale_models(repo)
    if cfg.serving or stale:  # a repository written by an older version serves the older layout
        repo = rewrite_repository(cfg.build_dir, out / "model_repository", **cfg.serving)
        why = f"with {cfg.serving}" if cfg.serving else f"re-rendered by this version (stale: {', '.join(stale)})"
        console.print(f"serving {repo} (the build's repository {why})")
    t = time.perf_counter()
    server = TritonServer(repositories_for(repo), log_file=out / "tritonserver.log", extra_args=CLIENT_ID_FORWARDING)
    with server:
        console.print(
            f"tritonserver ready in {time.perf_counter() - t:.1f}s (gRPC {server.grpc_url}, HTTP {server.http_url})"
        )
        yield server.grpc_url, server.http_url, server.metrics_url, server.process.pid if server.process else None
