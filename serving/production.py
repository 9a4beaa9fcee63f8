"""The documented production deployment: tritonserver on loopback, locked, behind the gateway."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from veil.serving.auth import Authenticator
from veil.serving.gateway import Gateway
from veil.serving.launcher import Health, ServerError, TritonServer, repositories_for
from veil.serving.policy import (
    ADMIN_KEY_HEADER,
    GATEWAY_KEY_HEADER,
    GRPC_RESTRICTED_PREFIX,
    Limits,
    internal_triton_args,
)
from veil.serving.secret_args import env_ref
from veil.serving.supervisor import RestartBudget, Supervisor, raise_fd_limit
from veil.serving.tls import TlsConfig

GATEWAY_KEY_ENV = "VEIL_TRITON_GATEWAY_KEY"
ADMIN_KEY_ENV = "VEIL_TRITON_ADMIN_KEY"


def repository_mode(repository: str | Path) -> str:
    """The serving mode a repository was written in (``options.json`` from veil-build)."""
    options = Path(repository) / "options.json"
    try:
        return str(json.loads(options.read_text())["mode"])
    except (OSError, ValueError, KeyError) as err:
        raise ServerError(
            f"{options} is missing or unreadable ({err}); was the repository written by veil-build?"
        ) from err


class ProductionServer:
    """tritonserver on loopback, restricted with fresh random keys, and the :class:`Gateway` in
    front of it (the only listener callers should reach).

    ``recover()`` restarts tritonserver (same ports, so the gateway keeps working) when it or a
    python stub has died or it stopped answering, within a budget of ``max_restarts`` per
    ``restart_window_s`` (see :class:`Supervisor`), and returns the :class:`Health` report that
    said so."""

    def __init__(
        self,
        repository: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        platform: str = "embedded",
        log_file: str | Path | None = None,
        client_id_source: str = "caller",
        allow_benchmark: bool = False,
        max_restarts: int = 5,
        restart_window_s: float = 600.0,
        startup_timeout: float = 180.0,
        limits: Limits | None = None,
        tls: TlsConfig | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.allow_benchmark = allow_benchmark
        self.gateway_key = secrets.token_urlsafe(24)
        self.admin_key = secrets.token_urlsafe(24)
        self.triton = TritonServer(
            repositories_for(self.repository, platform),
            log_file=log_file,
            # The keys travel in tritonserver's environment, never on its command line.
            extra_args=internal_triton_args(env_ref(GATEWAY_KEY_ENV), env_ref(ADMIN_KEY_ENV)),
            secret_env={GATEWAY_KEY_ENV: self.gateway_key, ADMIN_KEY_ENV: self.admin_key},
            startup_timeout=startup_timeout,
        )
        self.gateway = Gateway(
            self.triton.http_url,
            self.triton.grpc_url,
            host=host,
            http_port=http_port,
            grpc_port=grpc_port,
            upstream_key=self.gateway_key,
            client_id_source=client_id_source,
            health=self.problem,
            limits=limits,
            tls=tls,
            auth=auth,
        )
        self.supervisor = Supervisor(
            self.triton,
            budget=RestartBudget(max_restarts=max_restarts, window_s=restart_window_s),
            probe_timeout_s=self.gateway.limits.probe_timeout_s,
        )

    @property
    def http_url(self) -> str:
        return self.gateway.http_url

    @property
    def grpc_url(self) -> str:
        return self.gateway.grpc_url

    def internal_headers(self, *, admin: bool = False, grpc_protocol: bool = False) -> dict[str, str]:
        """Headers that open the internal Triton (for operators and tests, never for callers)."""
        key, value = (ADMIN_KEY_HEADER, self.admin_key) if admin else (GATEWAY_KEY_HEADER, self.gateway_key)
        return {(GRPC_RESTRICTED_PREFIX + key) if grpc_protocol else key: value}

    def problem(self) -> str | None:
        """None when tritonserver is healthy, else why not (cheap: no probe; the gateway asks)."""
        if self.supervisor.restarting:
            return "tritonserver is restarting"
        report = self.supervisor.health()
        return None if report.ok else report.describe()

    def start(self) -> ProductionServer:
        mode = repository_mode(self.repository)
        if mode != "production" and not self.allow_benchmark:
            raise ServerError(
                f"{self.repository} was built in {mode} mode (it serves the undefended veil_raw ensemble); "
                "build it with --mode production, or pass allow_benchmark / --allow-benchmark"
            )
        raise_fd_limit()
        self.triton.start()
        try:
            self.gateway.start()
        except BaseException:
            self.triton.stop()
            raise
        return self

    def recover(self) -> Health | None:
        """See :meth:`Supervisor.recover`."""
        return self.supervisor.recover()

    def stop(self) -> None:
        self.gateway.stop()
        self.triton.stop()

    def __enter__(self) -> ProductionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
