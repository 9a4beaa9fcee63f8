"""Soak: the production deployment at saturation for a bounded time; zero failed requests, and the
resident memory of tritonserver and its python stubs growing less than 5% after warm-up.

    python -m veil.loadtest.soak --build-dir build/sst2-minilm              # 10 minutes (the benchmark)
    python -m veil.loadtest.soak --build-dir build/sst2-minilm --quick      # about a minute (CI)

Writes a production-mode repository from the build's artifacts (``<build>/soak/model_repository``:
no raw ensemble), starts ``python -m veil.serving.gateway`` on it as a separate process (tritonserver
on loopback behind the gateway, with restarts switched off so a crash shows up as failures), and
drives ``veil_defended`` through the gateway with the closed-loop Locust users of
``veil.loadtest.locustfile`` (gRPC and HTTP, no think time: saturation), each user with its own
client id. Every few seconds it samples the RSS of the gateway, tritonserver and each stub.
Memory growth is measured from the end of warm-up to the end of the run, on tritonserver plus its
stubs (the gateway is reported beside it). Writes ``<build>/soak/soak.json`` and exits non-zero if
a request failed or memory grew by 5% or more.

Importing this module monkey-patches the process for gevent (Locust needs it): run it as a program.
"""

from __future__ import annotations

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gevent
import psutil
import requests
from locust.env import Environment

from veil.loadtest import locustfile as lf
from veil.model_repository.spec import DEFENDED
from veil.model_repository.writer import rewrite_repository
from veil.serving.launcher import STUB_NAME, free_port, server_env, stub_model_name

GROWTH_LIMIT = 0.05


@dataclass
class SoakConfig:
    build_dir: str = "build/sst2-minilm"
    seconds: float = 600.0
    warmup: float = 60.0
    grpc_users: int = 4
    http_users: int = 4
    batch: int = 1
    sample_every: float = 5.0
    texts: int = 2000
    startup_timeout: float = 300.0

    @classmethod
    def quick(cls, build_dir: str) -> SoakConfig:
        return cls(build_dir=build_dir, seconds=20.0, warmup=8.0, grpc_users=2, http_users=2, sample_every=1.0)

    def out_dir(self) -> Path:
        return Path(self.build_dir) / "soak"


def production_repository(build_dir: Path, out: Path) -> Path:
    """The build's repository rewritten in production mode (no veil_raw, no softmax)."""
    return rewrite_repository(build_dir, out, mode="production", variants=("veil",))


def memory(gateway_pid: int) -> dict:
    """RSS in bytes of the gateway, tritonserver (its child) and each stub (tritonserver's children)."""
    out: dict = {"gateway": 0, "tritonserver": 0, "stubs": {}}
    try:
        gateway = psutil.Process(gateway_pid)
        out["gateway"] = gateway.memory_info().rss
        children = gateway.children(recursive=True)
    except psutil.Error:
        return out
    for proc in children:
        try:
            name, rss = proc.name(), proc.memory_info().rss
        except psutil.Error:
            continue
        if name == STUB_NAME:
            model = stub_model_name(proc) or f"pid {proc.pid}"
            out["stubs"][model] = out["stubs"].get(model, 0) + rss
        elif name == "tritonserver":
            out["tritonserver"] += rss
    out["server_total"] = out["tritonserver"] + sum(out["stubs"].values())
    return out


def growth(before: dict, after: dict) -> dict:
    """Relative RSS change per process group from ``before`` to ``after``."""

    def rel(a: int, b: int) -> float | None:
        return (b - a) / a if a else None

    return {
        "server_total": rel(before.get("server_total", 0), after.get("server_total", 0)),
        "tritonserver": rel(before["tritonserver"], after["tritonserver"]),
        "gateway": rel(before["gateway"], after["gateway"]),
        "stubs": {m: rel(before["stubs"].get(m, 0), after["stubs"].get(m, 0)) for m in after["stubs"]},
    }


class Stack:
    """``python -m veil.serving.gateway`` in its own process (its own process group)."""

    def __init__(self, repository: Path, log_dir: Path, startup_timeout: float) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log = open(log_dir / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil.serving.gateway",
                f"--repository={repository}",
                f"--http-port={self.http_port}",
                f"--grpc-port={self.grpc_port}",
                f"--log-file={log_dir / 'tritonserver.log'}",
                "--max-restarts=0",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}; see {self.log.name}")
            try:
                if requests.get(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the gateway was not ready after {startup_timeout:.0f}s; see {self.log.name}")

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()
        return self.process.returncode


def run(cfg: SoakConfig) -> dict:
    build_dir = Path(cfg.build_dir)
    out = cfg.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    try:
        texts = lf.load_texts(build_dir, "nonmember_eval", cfg.texts)
    except Exception as err:  # no dataset on this machine: the fallback sentences
        print(f"[soak] no build texts ({err}); using the locustfile's fallback sentences", flush=True)
        texts = list(lf.FALLBACK_TEXTS)
    lf.set_texts(texts)
    repo = production_repository(build_dir, out / "model_repository")
    t = time.perf_counter()
    stack = Stack(repo, out, cfg.startup_timeout)
    print(f"[soak] gateway + tritonserver ready in {time.perf_counter() - t:.1f}s", flush=True)

    collector = lf.SampleCollector()
    classes = []
    for protocol, users, port in (("grpc", cfg.grpc_users, stack.grpc_port), ("http", cfg.http_users, stack.http_port)):
        if users:
            cls = lf.user_class(protocol, DEFENDED, f"127.0.0.1:{port}", batch=cfg.batch, collector=collector)
            cls.fixed_count = users
            classes.append(cls)
    env = Environment(user_classes=classes)
    runner = env.create_local_runner()
    samples: list[tuple[float, dict]] = []
    users = cfg.grpc_users + cfg.http_users
    try:
        runner.start(users, spawn_rate=users)
        runner.spawning_greenlet.join(timeout=30)
        t0 = time.monotonic()
        end = t0 + cfg.warmup + cfg.seconds
        next_sample = t0
        while time.monotonic() < end:
            if time.monotonic() >= next_sample:
                samples.append((time.monotonic() - t0, memory(stack.process.pid)))
                next_sample += cfg.sample_every
            gevent.sleep(0.1)
        samples.append((time.monotonic() - t0, memory(stack.process.pid)))
        for cls in classes:
            cls.halt = True
        runner.user_greenlets.join(timeout=70)
    finally:
        runner.quit()
        code = stack.stop()

    after_warmup = next(m for s, m in samples if s >= cfg.warmup)
    final = samples[-1][1]
    summary = collector.summary()
    requests_total = sum(v["requests"] for v in summary.values())
    failures = sum(v["errors"] for v in summary.values())
    g = growth(after_warmup, final)
    report = {
        "config": dataclasses.asdict(cfg),
        "requests": requests_total,
        "failures": failures,
        "locust_requests": int(env.stats.total.num_requests),
        "locust_failures": int(env.stats.total.num_failures),
        "throughput_rps": requests_total / (cfg.warmup + cfg.seconds),
        "per_target": summary,
        "memory_after_warmup": after_warmup,
        "memory_final": final,
        "growth": g,
        "samples": [{"t": s, "server_total": m.get("server_total"), "gateway": m["gateway"]} for s, m in samples],
        "gateway_exit_code": code,
        "passed": failures == 0 and g["server_total"] is not None and g["server_total"] < GROWTH_LIMIT,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Soak the production deployment (gateway + tritonserver) at saturation")
    p.add_argument("--build-dir", default="build/sst2-minilm")
    p.add_argument("--quick", action="store_true", help="CI size: 8 s warm-up, 20 s measured, 4 users")
    p.add_argument("--seconds", type=float, help="measured seconds after warm-up (default 600)")
    p.add_argument("--warmup", type=float, help="warm-up seconds (default 60)")
    p.add_argument("--grpc-users", type=int)
    p.add_argument("--http-users", type=int)
    p.add_argument("--batch", type=int)
    args = p.parse_args(argv)
    cfg = SoakConfig.quick(args.build_dir) if args.quick else SoakConfig(build_dir=args.build_dir)
    for name in ("seconds", "warmup", "grpc_users", "http_users", "batch"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    report = run(cfg)
    g = report["growth"]
    fmt = lambda x: "n/a" if x is None else f"{x:+.2%}"  # noqa: E731
    mb = lambda b: f"{b / 1e6:.1f} MB"  # noqa: E731
    print(
        f"[soak] {report['requests']} requests in {cfg.warmup + cfg.seconds:.0f}s"
        f" ({report['throughput_rps']:.1f}/s), {report['failures']} failed;"
        f" server RSS {mb(report['memory_after_warmup']['server_total'])} after warm-up ->"
        f" {mb(report['memory_final']['server_total'])} ({fmt(g['server_total'])}),"
        f" gateway {mb(report['memory_after_warmup']['gateway'])} -> {mb(report['memory_final']['gateway'])}"
        f" ({fmt(g['gateway'])}); stubs {', '.join(f'{m} {fmt(v)}' for m, v in g['stubs'].items())};"
        f" {'PASS' if report['passed'] else 'FAIL'} -> {cfg.out_dir() / 'soak.json'}",
        flush=True,
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
