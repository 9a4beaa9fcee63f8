"""A local Redis server for the shared adaptive state: tests, benchmarks and single-host deployments.

Debian's ``redis-server`` (Redis 7), started on a loopback port with a temporary directory, no
persistence (``--save '' --appendonly no``: the state is soft, losing it only makes clients young
again, i.e. more protected), bounded memory (``--maxmemory`` with ``volatile-lru``, see
:mod:`veil.python_backend.redis_state`), and stopped by PID. ``ensure_installed`` installs the
package with apt when it is missing (CI machines are fresh).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time

import redis

from veil.serving.launcher import ServerError, free_port

MAXMEMORY = "64mb"
POLICY = "volatile-lru"


def ensure_installed() -> str:
    """Path of ``redis-server``, installing Debian's package first if it is missing."""
    found = shutil.which("redis-server")
    if found:
        return found
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise ServerError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    found = shutil.which("redis-server")
    if not found:
        raise ServerError("apt-get installed redis-server but it is not on PATH")
    return found


class RedisServer:
    """``redis-server`` on 127.0.0.1 (a free port unless given); a context manager.

    ``stop``/``start`` again reuse the port, so clients configured with :attr:`url` reconnect to
    the restarted server (which starts empty)."""

    def __init__(self, *, port: int | None = None, maxmemory: str = MAXMEMORY, policy: str = POLICY) -> None:
        self.port = port or free_port()
        self.maxmemory, self.policy = maxmemory, policy
        self.process: subprocess.Popen | None = None
        self.dir: tempfile.TemporaryDirectory | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            ensure_installed(),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir.name,
            "--save", "", "--appendonly", "no",
            "--maxmemory", self.maxmemory, "--maxmemory-policy", self.policy,
            "--daemonize", "no", "--loglevel", "warning", "--logfile", "",
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.dir = self.dir or tempfile.TemporaryDirectory(prefix="veil-redis-")
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise ServerError(f"redis-server exited ({self.process.returncode}): {self.process.stderr.read()}")
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"redis-server not answering on port {self.port} after {timeout:.0f}s")
                time.sleep(0.05)
        finally:
            client.close()

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a slow or hung Redis)."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGKILL by PID (the state is soft; a killed Redis is the failure to survive)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc is not None and proc.stderr:
            proc.stderr.close()

    def close(self) -> None:
        self.stop()
        if self.dir is not None:
            self.dir.cleanup()
            self.dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
