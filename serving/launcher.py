"""Start and stop the real tritonserver bundled with nvidia-pytriton, without Docker.

The wheel ships the binary, the python backend and one stub per Python version. We copy the
backend plus the stub matching this interpreter into a project-local folder, put this
environment's ``bin`` first on PATH (the stub runs ``python3`` from there, so models import this
venv's numpy/torch/veil), add the wheel's libraries and this interpreter's libdir to
LD_LIBRARY_PATH, and wait for ``/v2/health/ready``.

NVIDIA's container on a GPU host serves the same repository with the native onnxruntime
classifier; see README.md ("GPU host") for the command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from veil.serving import secret_args

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "build" / "triton-runtime"


STUB_NAME = "triton_python_backend_stub"


class ServerError(RuntimeError):
    pass


@dataclass
class Health:
    """What the launcher sees of a running server: the tritonserver process and its python stubs.

    Triton 2.51 does not restart a python-backend stub that dies: every later request to that model
    fails ("Stub process ... is not healthy") while ``/v2/health/ready`` still says ready, so the
    launcher watches the stub processes itself and names the model whose stub is gone."""

    alive: bool
    exit_code: int | None = None
    dead_stubs: list[str] = field(default_factory=list)
    """``model (pid N)`` for every stub recorded at start-up that has exited since."""
    stubs: dict[str, list[int]] = field(default_factory=dict)
    """Live stub PIDs per model."""
    unanswered: str = ""
    """Set when the (running) server did not answer liveness probes: a frozen or wedged process."""
    degraded: str = ""
    """Serving, but safely degraded: the defense's adaptive state store does not answer, so every
    output is served at threat 1 (see :meth:`TritonServer.degraded`). Not a reason to restart."""

    @property
    def ok(self) -> bool:
        return self.alive and not self.dead_stubs and not self.unanswered

    def describe(self) -> str:
        if not self.alive:
            code = self.exit_code
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            return f"tritonserver is not running ({how})"
        if self.dead_stubs:
            return "python-backend stub process died: " + ", ".join(self.dead_stubs)
        if self.unanswered:
            return self.unanswered
        state = f"; degraded: {self.degraded}" if self.degraded else ""
        return f"healthy ({sum(len(p) for p in self.stubs.values())} stub processes){state}"


def stub_model_name(proc: psutil.Process) -> str | None:
    """Model name of a python-backend stub (its first argument is ``<model>/<version>/model.py``)."""
    try:
        if proc.name() != STUB_NAME:
            return None
        args = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    return Path(args[1]).parent.parent.name if len(args) > 1 else None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def prepare_backends(dest: Path = RUNTIME_DIR) -> Path:
    """Project-local backend folder: python backend + the stub for this interpreter."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no python backend stub for Python {version}")
    python = dest / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        target = python / src.name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            shutil.copy2(src, target)
    return dest / "backends"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:

    env = dict(os.environ)
    site = Path(_pytriton_root()).parent.parent
    libs = [str(site / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class TritonServer:
    """A tritonserver process on loopback ports; use as a context manager."""

    def __init__(
        self,
        repositories: Sequence[str | Path],
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 180.0,
        secret_env: Mapping[str, str] | None = None,
    ) -> None:
        """``secret_env``: values for ``@veil-env:NAME`` markers in ``extra_args``, kept off the
        command line (:mod:`.secret_args`)."""
        self.repositories = [Path(r).resolve() for r in repositories]
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = list(extra_args)
        self.secret_env = dict(secret_env or {})
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._log = None
        self._stubs: dict[str, list[psutil.Process]] = {}

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        binary = _pytriton_root() / "bin" / "tritonserver"
        cmd = [str(binary)]
        for repo in self.repositories:
            cmd.append(f"--model-repository={repo}")
        cmd += [
            f"--backend-directory={prepare_backends()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            "--disable-auto-complete-config",
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=10",
            "--log-verbose=0",
        ]
        return cmd + self.extra_args

    def start(self) -> TritonServer:
        for repo in self.repositories:
            if not repo.is_dir():
                raise ServerError(f"model repository {repo} does not exist")
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            # A restart appends, so the log keeps what happened before it.
            self._log = open(self.log_file, "ab" if self.restarts else "wb")  # noqa: SIM115 - closed in stop()
        env = server_env()
        args = secret_args.prepare(self.command(), env, self.secret_env, RUNTIME_DIR)
        self.process = subprocess.Popen(
            args,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self.wait_ready()
            self._stubs = self.stub_processes()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(
                    f"tritonserver exited with code {self.process.returncode if self.process else '?'}"
                    f" before becoming ready\n{self.log_tail()}"
                )
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise ServerError(f"tritonserver not ready after {self.startup_timeout:.0f}s\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stub_processes(self) -> dict[str, list[psutil.Process]]:
        """The python-backend stub processes (children of tritonserver), by model name."""
        out: dict[str, list[psutil.Process]] = {}
        if not self.alive():
            return out
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return out
        for child in children:
            model = stub_model_name(child)
            if model is not None and _running(child):
                out.setdefault(model, []).append(child)
        return out

    def health(self) -> Health:
        """Is the server process alive, and is every stub recorded at start-up still running?"""
        if self.process is None:
            return Health(alive=False)
        if not self.alive():
            return Health(alive=False, exit_code=self.process.returncode)
        dead = [f"{model} (pid {p.pid})" for model, procs in self._stubs.items() for p in procs if not _running(p)]
        live = {m: [p.pid for p in procs] for m, procs in self.stub_processes().items()}
        return Health(alive=True, dead_stubs=sorted(dead), stubs=live)

    def probe(self, timeout: float) -> bool:
        """Does the server answer ``/v2/health/live`` within ``timeout`` seconds? (A stopped or
        wedged process accepts connections but never answers.)"""
        try:
            return requests.get(f"http://{self.http_url}/v2/health/live", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def degraded(self, timeout: float = 1.0) -> str | None:
        """None unless a defense instance reports its adaptive state store unreachable (the
        ``veil_state_degraded`` gauge on the metrics port; it lags by the metrics flush period)."""
        try:
            text = requests.get(self.metrics_url, timeout=timeout).text
        except requests.RequestException:
            return None
        return degraded_instances(text)

    def check(self) -> Health:
        """``health()``, raising :class:`ServerError` that names what died."""
        report = self.health()
        if not report.ok:
            raise ServerError(report.describe())
        return report

    def restart(self, grace: float = 2.0) -> TritonServer:
        """Stop whatever is left of the server (stubs included) and start it again on the same ports.

        ``grace`` is short: a server being restarted has already failed, and tritonserver would
        otherwise wait out its exit timeout on requests to a dead stub."""
        self.stop(timeout=grace)
        self.restarts += 1
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file or not self.log_file.exists():
            return "(no log file)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL after ``timeout``; returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Stubs outlive a server that was killed; end the ones we recorded (psutil checks the
        # start time, so a recycled PID is never hit).
        for stub in (p for procs in self._stubs.values() for p in procs):
            with contextlib.suppress(psutil.Error):
                if _running(stub):
                    stub.kill()
        self._stubs = {}
        if self._log:
            self._log.close()
            self._log = None
        return proc.returncode

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def degraded_instances(metrics: str) -> str | None:
    """From Prometheus text: which defense instances serve the fallback threat, or None."""
    where = []
    for line in metrics.splitlines():
        if line.startswith("veil_state_degraded{") and float(line.rsplit(" ", 1)[1]) > 0:
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split(","))
            where.append(labels.get("instance", labels.get("model", "?")).strip('"'))
    if not where:
        return None
    return f"adaptive state store unreachable in {', '.join(sorted(where))}: outputs served at threat 1"


def repositories_for(repo_root: str | Path, platform: str = "embedded") -> list[Path]:
    root = Path(repo_root)
    return [root / "common", root / platform]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Serve a Veil model repository on the embedded tritonserver")
    p.add_argument(
        "--repository",
        default="build/sst2-minilm/model_repository",
        help="folder written by veil-build (holds common/ and embedded/)",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", default="build/tritonserver.log")
    p.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart the server at most this many times in 10 minutes when it or a python-backend stub dies,"
        " or it stops answering (default: exit)",
    )
    p.add_argument("extra", nargs="*", help="extra tritonserver flags (after --)")
    args = p.parse_args(argv)
    from veil.model_repository.writer import stale_warning

    if warning := stale_warning(args.repository):
        print(warning, file=sys.stderr, flush=True)
    server = TritonServer(
        repositories_for(args.repository),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        extra_args=args.extra,
    )
    from veil.serving.supervisor import RestartBudget, Supervisor, restart_step, serve

    supervisor = Supervisor(server, budget=RestartBudget(max_restarts=args.max_restarts))
    return serve(
        server,
        banner=lambda: (
            f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}, metrics"
            f" {server.metrics_url} (pid {server.process.pid}); Ctrl-C stops it"
        ),
        step=restart_step(supervisor),
    )


if __name__ == "__main__":
    sys.exit(main())
