"""The documented production deployment: tritonserver on loopback, locked, behind the gateway."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from veil.serving.gateway import Gateway
from veil.serving.launcher import Health, ServerError, TritonServer, repositories_for
from veil.serving.policy import ADMIN_KEY_HEADER, GATEWAY_KEY_HEADER, GRPC_RESTRICTED_PREFIX, internal_triton_args


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
    python stub has died, and returns the :class:`Health` report that said so."""

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
        max_restarts: int = 3,
        startup_timeout: float = 180.0,
    ) -> None:
        self.repository = Path(repository)
        self.allow_benchmark = allow_benchmark
        self.max_restarts = max_restarts
        self.gateway_key = secrets.token_urlsafe(24)
        self.admin_key = secrets.token_urlsafe(24)
        self.triton = TritonServer(
            repositories_for(self.repository, platform),
            log_file=log_file,
            extra_args=internal_triton_args(self.gateway_key, self.admin_key),
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
        )
        self._restarting = False

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
        if self._restarting:
            return "tritonserver is restarting"
        report = self.triton.health()
        return None if report.ok else report.describe()

    def start(self) -> ProductionServer:
        mode = repository_mode(self.repository)
        if mode != "production" and not self.allow_benchmark:
            raise ServerError(
                f"{self.repository} was built in {mode} mode (it serves the undefended veil_raw ensemble); "
                "build it with --mode production, or pass allow_benchmark / --allow-benchmark"
            )
        self.triton.start()
        try:
            self.gateway.start()
        except BaseException:
            self.triton.stop()
            raise
        return self

    def recover(self) -> Health | None:
        """Restart tritonserver if it or a stub died; the report that triggered it, else None."""
        report = self.triton.health()
        if report.ok:
            return None
        if self.triton.restarts >= self.max_restarts:
            raise ServerError(f"{report.describe()}; not restarting again after {self.triton.restarts} restarts")
        self._restarting = True
        try:
            self.triton.restart()
        finally:
            self._restarting = False
        return report

    def stop(self) -> None:
        self.gateway.stop()
        self.triton.stop()

    def __enter__(self) -> ProductionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
