"""Latency and throughput under load: the defended ensemble against the undefended one, on the real server.

    python -m veil.loadtest.runner --build-dir build/sst2-minilm          # about 3 minutes
    python -m veil.loadtest.runner --build-dir build/sst2-minilm --quick  # seconds (CI size)

Starts the embedded tritonserver once on loopback ports (or uses ``--grpc-url``/``--http-url``),
then drives ``veil_undefended`` (the goals' reference: tokenizer -> classifier with softmax in its
graph), ``veil_raw`` (for reference: the three-step shape with a python softmax) and
``veil_defended`` with the Locust users of ``locustfile.py`` (Locust as a library: one Environment
and local runner per round, no web UI). For every protocol and user count it runs alternating
rounds, the models forwards then backwards (ABC CBA), so slow drift and noise on the shared machine
hit every ensemble alike. Latency percentiles come from the users' own
microsecond perf_counter samples; Triton's statistics endpoint, read before and after each round,
says where the server's time went (queue and compute of every composing model). perf_analyzer
cross-checks the gRPC numbers when its binary is available. Writes ``report.md``, ``report.json``
and ``latency_vs_concurrency.png`` into ``<build>/loadtest/`` (``loadtest-quick/`` with --quick);
the settings live in ``config.py``, the numbers in ``results.py``, the rendering in ``report.py``
and the server plumbing in ``server.py``.

Importing this module monkey-patches the process for gevent (Locust needs it): run it as a
program, not inside another application.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import argparse
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import gevent
import numpy as np
import requests
from locust.env import Environment
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from veil.export.build_dir import BuildDir
from veil.loadtest import locustfile as lf
from veil.loadtest import perf_analyzer as pa
from veil.loadtest.config import DEFENDED, RAW, UNDEFENDED, RunConfig, add_serving_option, parsed_serving, plan
from veil.loadtest.report import to_markdown, write_reports
from veil.loadtest.results import RoundResult, stats_delta, summarize
from veil.loadtest.server import defense_counters, ensemble_steps, model_stats, process_cpu, serving

MIN_SAMPLES = 3  # a round measures at least this many requests ...
MIN_SAMPLES_WAIT_S = 30.0  # ... unless that takes longer than this

# --- one round --------------------------------------------------------------------------------


def run_round(
    cfg: RunConfig,
    *,
    protocol: str,
    model: str,
    users: int,
    index: int,
    url: str,
    http_url: str,
    stat_models: Sequence[str],
    server_pid: int | None,
    tick: Callable[[], None] = lambda: None,
    warmup: float | None = None,
    seconds: float | None = None,
    max_requests: int | None = None,
) -> RoundResult:
    """Spawn ``users`` closed-loop users at once, measure a window, let in-flight requests finish."""
    warmup = cfg.warmup_seconds if warmup is None else warmup
    seconds = cfg.round_seconds if seconds is None else seconds
    max_requests = cfg.max_requests if max_requests is None else max_requests
    lf.COLLECTOR.drain()
    cls = lf.user_class(protocol, model, url, batch=cfg.batch, client_ids=cfg.client_ids, max_requests=max_requests)
    env = Environment(user_classes=[cls])
    runner = env.create_local_runner()
    before = model_stats(http_url)
    cpu0, srv0 = time.process_time(), process_cpu(server_pid)
    w0 = time.perf_counter()
    try:
        runner.start(users, spawn_rate=users)
        runner.spawning_greenlet.join(timeout=30)
        gevent.sleep(warmup)
        t0 = time.perf_counter()
        deadline, hard_stop = t0 + seconds, t0 + max(seconds, MIN_SAMPLES_WAIT_S)
        capped = False
        while True:
            gevent.sleep(0.02)
            tick()
            now = time.perf_counter()
            if max_requests and lf.COLLECTOR.count() >= max_requests:  # users stop themselves at the cap
                capped = True
                break
            # a starved machine may finish nothing inside a short window: wait (bounded) for a few samples
            if now >= hard_stop or (now >= deadline and lf.COLLECTOR.completed_since(t0) >= MIN_SAMPLES):
                break
        t1 = time.perf_counter()
        cls.halt = True  # users finish the request in flight, then stop
        runner.user_greenlets.join(timeout=cls.timeout + 5)
    finally:
        runner.quit()
    wall = time.perf_counter() - w0
    after = model_stats(http_url)
    client_cpu = (time.process_time() - cpu0) / wall
    server_cpu = (process_cpu(server_pid) - srv0) / wall if server_pid else None
    sets = lf.COLLECTOR.drain()
    s = sets.get(f"{protocol}:{model}", lf.SampleSet())
    starts = np.asarray(s.starts)
    lat = np.asarray(s.latencies)
    if capped and len(starts):  # the window closes with the last request, not with the next poll
        t1 = min(t1, float((starts + lat).max()))
    in_window = (starts >= t0) & (starts < t1)
    return RoundResult(
        protocol=protocol,
        users=users,
        model=model,
        index=index,
        seconds=t1 - t0,
        latencies_us=lat[in_window] * 1e6,
        errors=s.errors,
        error_examples=s.error_examples,
        locust_requests=int(env.stats.total.num_requests),
        locust_failures=int(env.stats.total.num_failures),
        stats=stats_delta(before, after, stat_models),
        client_cpu=client_cpu,
        server_cpu=server_cpu,
    )


# --- the whole measurement --------------------------------------------------------------------


def measure(cfg: RunConfig, console: Console) -> dict:
    """Warm up, run every planned round against one server, and summarize with the server's metadata."""
    texts = lf.load_texts(cfg.build_dir, cfg.split, cfg.texts)
    lf.set_texts(texts)
    steps = plan(cfg)
    with serving(cfg, console) as (grpc_url, http_url, metrics_url, pid):
        composing = {m: ensemble_steps(http_url, m) for m in cfg.models}
        stat_models = sorted({*cfg.models, *(step for m in cfg.models for step in composing[m])})
        urls = {"grpc": grpc_url, "http": http_url}
        server_info = requests.get(f"http://{http_url}/v2", timeout=5).json()
        defense_model = composing[cfg.defended][-1]
        counters0 = defense_counters(metrics_url, defense_model)
        rounds: list[RoundResult] = []
        on_server = partial(run_round, cfg, http_url=http_url, stat_models=stat_models, server_pid=pid)
        with progress_for(console, len(steps)) as (advance, tick):
            # warm-up: connections, lazy imports in the python stubs, first-call allocations
            for protocol in dict.fromkeys(p for p, *_ in steps):
                for model in cfg.models:
                    on_server(
                        protocol=protocol,
                        model=model,
                        users=1,
                        index=-1,
                        url=urls[protocol],
                        warmup=0.0,
                        seconds=0.5 if cfg.quick else 1.5,
                        max_requests=5 if cfg.quick else 0,
                    )
            for protocol, users, r, model in steps:
                advance(f"{protocol} {users:>2} users, round {r + 1}/{cfg.rounds}: {model}")
                rounds.append(
                    on_server(protocol=protocol, model=model, users=users, index=r, url=urls[protocol], tick=tick)
                )
            advance("done")
        counters1 = defense_counters(metrics_url, defense_model)
        report = summarize(cfg, rounds, composing)
        report["meta"].update(
            server={"name": server_info.get("name"), "version": server_info.get("version")},
            embedded_server=pid is not None,
            texts={"split": cfg.split, "count": len(texts)},
            defense_model=defense_model,
            defense_counters={k: counters1.get(k, 0.0) - counters0.get(k, 0.0) for k in counters1},
        )
        report["perf_analyzer"] = cross_check(cfg, report, grpc_url, texts, console)
    return report


@contextmanager
def progress_for(console: Console, total: int) -> Iterator[tuple[Callable[[str], None], Callable[[], None]]]:
    """A rich progress bar on a terminal, one line per round otherwise (CI logs)."""
    if not console.is_terminal:
        count = {"n": 0}

        def advance_line(text: str) -> None:
            if text != "done":
                count["n"] += 1
                console.print(f"[{count['n']}/{total}] {text}")

        yield advance_line, lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, auto_refresh=False) as progress:
        task = progress.add_task("warm-up", total=total)
        started = {"n": 0}

        def advance(text: str) -> None:
            if started["n"]:
                progress.advance(task)
            started["n"] += 1
            progress.update(task, description=text)
            progress.refresh()

        yield advance, progress.refresh


# --- perf_analyzer ----------------------------------------------------------------------------


def cross_check(cfg: RunConfig, report: dict, grpc_url: str, texts: Sequence[str], console: Console) -> dict:
    """perf_analyzer on every compared ensemble over gRPC at concurrency 1 and at saturation, alternating."""
    if not cfg.perf_analyzer:
        return {"status": "skipped (--quick or --no-perf-analyzer)"}
    try:
        binary, env = pa.find_perf_analyzer()
    except pa.PerfAnalyzerUnavailable as exc:
        console.print(f"[yellow]perf_analyzer unavailable: {exc}[/yellow]")
        return {"status": f"perf_analyzer unavailable: {exc}"}
    out = cfg.output_dir() / "perf_analyzer"
    out.mkdir(parents=True, exist_ok=True)
    data = pa.write_input_data(texts, out / "input.json")
    sat = report["summary"].get("grpc", {}).get("saturation", {}).get("users", 1)
    runs = []
    for i, concurrency in enumerate(sorted({1, sat})):
        for model in cfg.models if i % 2 == 0 else cfg.models[::-1]:
            console.print(f"perf_analyzer: {model} over gRPC at concurrency {concurrency}")
            runs.append(
                pa.run(
                    binary,
                    env,
                    model=model,
                    url=grpc_url,
                    protocol="grpc",
                    concurrency=concurrency,
                    input_data=data,
                    csv_path=out / f"{model}_c{concurrency}.csv",
                    request_count=cfg.perf_request_count,
                )
            )
    failed = [r for r in runs if "error" in r]
    status = "ok" if not failed else f"{len(failed)} of {len(runs)} runs failed"
    return {"status": status, "binary": str(binary), "runs": runs}


# --- command line -----------------------------------------------------------------------------


def _users(text: str) -> tuple[int, ...]:
    """``--grpc-users 1,4,16``: an empty list is allowed (that protocol is skipped)."""
    values = tuple(int(x) for x in text.split(",") if x.strip())
    if any(v < 1 or v > 64 for v in values):
        raise argparse.ArgumentTypeError("user counts must be between 1 and 64")
    return values


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    """The command line as a RunConfig; unset flags keep the full or the --quick defaults."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", default="build/sst2-minilm")
    p.add_argument("--out", default=None, help="report folder (default <build>/loadtest, or loadtest-quick)")
    p.add_argument("--quick", action="store_true", help="CI size: seconds, bounded request counts, no perf_analyzer")
    p.add_argument("--grpc-users", type=_users, default=None, help="comma-separated user counts (default 1,2,4,8,16)")
    p.add_argument("--http-users", type=_users, default=None, help="comma-separated, may be empty (default 1,8)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per ensemble and user count (default 2)")
    p.add_argument("--round-seconds", type=float, default=None, help="measured seconds per round (default 3)")
    p.add_argument("--warmup-seconds", type=float, default=None)
    p.add_argument(
        "--max-requests", type=int, default=None, help="at most this many requests per round (warm-up included)"
    )
    p.add_argument("--batch", type=int, default=1, help="sentences per request")
    p.add_argument("--client-ids", choices=lf.CLIENT_ID_MODES, default="per-user")
    p.add_argument("--split", default="nonmember_eval", help="which split of the build the sentences come from")
    p.add_argument("--defended", default=DEFENDED, help="defended ensemble (e.g. veil_fixed_intensity)")
    p.add_argument("--raw", default=RAW, help="reported for reference ('' to leave out)")
    p.add_argument(
        "--baseline", default=UNDEFENDED, help="the undefended ensemble the goals are judged against ('' to leave out)"
    )
    add_serving_option(p)
    p.add_argument("--no-perf-analyzer", action="store_true")
    p.add_argument("--fetch-perf-analyzer", action="store_true", help="download the tritonclient wheel that has it")
    p.add_argument("--grpc-url", default=None, help="use a running server instead of starting one")
    p.add_argument("--http-url", default=None)
    p.add_argument("--metrics-url", default=None)
    a = p.parse_args(argv)
    if a.fetch_perf_analyzer:
        print(f"downloaded {pa.fetch_wheel()}", flush=True)
    overrides = {
        "build_dir": a.build_dir,
        "out_dir": a.out,
        "batch": a.batch,
        "client_ids": a.client_ids,
        "split": a.split,
        "defended": a.defended,
        "raw": a.raw,
        "baseline": a.baseline,
        "grpc_url": a.grpc_url,
        "http_url": a.http_url,
        "metrics_url": a.metrics_url,
        "serving": parsed_serving(p, a.serving),
    }
    for name in ("grpc_users", "http_users", "rounds", "round_seconds", "warmup_seconds", "max_requests"):
        if getattr(a, name) is not None:
            overrides[name] = getattr(a, name)
    if a.no_perf_analyzer:
        overrides["perf_analyzer"] = False
    cfg = RunConfig.quick_defaults(**overrides) if a.quick else RunConfig(**overrides)
    if not cfg.grpc_users and not cfg.http_users:
        p.error("no user counts to run")
    if cfg.serving and (cfg.grpc_url or cfg.http_url):
        p.error("--serving rewrites the repository of a server this run starts; not with --grpc-url/--http-url")
    if not cfg.references:
        p.error("nothing to compare the defended ensemble with (--baseline and --raw both empty)")
    if cfg.rounds < 1 or cfg.round_seconds <= 0 or cfg.batch < 1:
        p.error("--rounds, --round-seconds and --batch must be positive")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 clean, 1 when any request failed, 2 when there is no build or the server did not start."""
    cfg = parse_args(argv)
    console = Console()
    if not BuildDir(cfg.build_dir).exists():
        console.print(f"[red]{cfg.build_dir}/build.json not found: run ./veil.sh build first[/red]")
        return 2
    from veil.serving.launcher import ServerError

    t = time.perf_counter()
    try:
        report = measure(cfg, console)
    except ServerError as exc:  # e.g. a defense artifact that no longer matches the code: rebuild
        console.print(f"tritonserver did not start: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    report["meta"]["seconds"] = time.perf_counter() - t
    paths = write_reports(report, cfg.output_dir())
    console.print(to_markdown(report), markup=False, highlight=False, soft_wrap=True)
    console.print(f"written: {', '.join(str(p) for p in paths.values())} ({report['meta']['seconds']:.0f}s)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
