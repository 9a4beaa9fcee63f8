"""The production front door: one route to the defended ensemble, and nothing else.

Triton answers for every model it has loaded, by name: a caller who can reach it can ask the
``classifier`` for raw logits, the ``tokenizer`` for tokens, ``mia_defense`` for a defense it can
probe with chosen logits, and the model-repository, shared-memory, statistics, trace and logging
APIs. So in production Triton listens on loopback only, with those APIs locked behind keys that
only this process knows (``--http-restricted-api`` / ``--grpc-restricted-protocol``), with
``--model-control-mode=none``, and callers reach it through this gateway, which exposes exactly:

- HTTP: ``GET /v2/health/live|ready``, ``GET /v2/models/<model>[/versions/N][/ready|/config]``,
  ``POST /v2/models/<model>[/versions/N]/infer``; everything else is 404 with a JSON error.
- gRPC: ``ServerLive``, ``ServerReady``, ``ModelReady``, ``ModelMetadata``, ``ModelConfig`` and
  ``ModelInfer`` for ``<model>`` only (another name is NOT_FOUND, the same answer whether or not
  Triton has such a model); every other RPC is PERMISSION_DENIED.

``<model>`` is ``veil_defended``. The upstream URL is built from the parsed route, never from the
caller's path, so no path trick reaches another model. The gateway also names the caller for
adaptive intensity: with authentication on (:mod:`.frontdoor`: TLS, API keys or client
certificates, per-principal limits, audit), the authenticated principal; with it off, the
``veil-client-id`` header (or request parameter) if the caller sent one, else its peer address
(``--client-id-source peer`` assigns the peer address always).

Layout: :mod:`.policy` holds the rules, :mod:`.http_proxy` and :mod:`.grpc_proxy` the two
front ends, this module the shared upstream connections and lifecycle, :mod:`.upstreams` the
replicas behind it (comma-separated upstream lists: health checks, round robin, one retry),
:mod:`.production` the supervised tritonserver + gateway, :mod:`.cli` the command line. ``python -m
veil.serving.gateway --repository ...`` runs that command line; see README.md, "Production
deployment (no bypass)".
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

import aiohttp
import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2_grpc

from veil.model_repository.spec import DEFENDED
from veil.serving.auth import Authenticator
from veil.serving.frontdoor import FrontDoor
from veil.serving.grpc_proxy import GrpcProxy
from veil.serving.guards import Admission
from veil.serving.http_proxy import HttpProxy
from veil.serving.launcher import ServerError
from veil.serving.policy import (  # noqa: F401 - re-exported: the gateway's public names
    ADMIN_KEY_HEADER,
    CLIENT_ID_SOURCES,
    DENIED_RPCS,
    GATEWAY_KEY_HEADER,
    GRPC_RESTRICTED_PREFIX,
    Limits,
    internal_triton_args,
)
from veil.serving.tls import TlsConfig
from veil.serving.upstreams import UpstreamPool, parse_addresses


class Gateway:
    """The HTTP + gRPC front door in a background thread (its own asyncio loop); ``start``/``stop``.

    ``health`` (optional) returns None when the upstream is healthy or a sentence naming what is
    wrong (the launcher's view, e.g. a dead python stub that Triton itself still reports ready);
    readiness then answers not ready with that sentence."""

    def __init__(
        self,
        upstream_http: str,
        upstream_grpc: str,
        *,
        model: str = DEFENDED,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        upstream_key: str | None = None,
        client_id_source: str = "caller",
        limits: Limits | None = None,
        health: Callable[[], str | None] | None = None,
        tls: TlsConfig | None = None,
        auth: Authenticator | None = None,
    ) -> None:
        if client_id_source not in CLIENT_ID_SOURCES:
            raise ValueError(f"client_id_source must be one of {CLIENT_ID_SOURCES}")
        self.upstreams = UpstreamPool(parse_addresses(upstream_http, upstream_grpc))
        """The Triton replicas (one or more); ``upstream_http`` and ``stub`` go through it."""
        self.upstream_key = upstream_key
        self.model, self.host, self.http_port, self.grpc_port = model, host, http_port, grpc_port
        self.client_id_source = client_id_source
        self.limits = limits or Limits()
        self.health = health
        self.session: aiohttp.ClientSession | None = None
        """HTTP client to the upstream (its connections are shared by every request)."""
        self.stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None
        """gRPC stub over the replicas (:class:`~veil.serving.upstreams.PooledStub`)."""
        self.admission = Admission(total=self.limits.max_concurrent, per_caller=self.limits.max_concurrent_per_caller)
        """Requests in flight over both protocols (one count: both run on this gateway's loop)."""
        self.tls = tls
        self.door = FrontDoor(
            auth=auth, admission=self.admission, client_id_source=client_id_source, limits=self.limits
        )
        """Authentication, client ids, per-principal limits and the audit log (see :mod:`.frontdoor`)."""
        self.http: HttpProxy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._http_server: asyncio.Server | None = None
        self._grpc_server: grpc.aio.Server | None = None

    @property
    def upstream_http(self) -> str:
        """The next healthy replica's HTTP address (round robin)."""
        return self.upstreams.pick().http

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Gateway:
        started = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._startup())
            except BaseException as err:  # reported to start()
                failure.append(err)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._shutdown())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="veil-gateway", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise ServerError(f"the Veil gateway did not start within {timeout:.0f}s")
        if failure:
            raise ServerError(f"the Veil gateway failed to start: {failure[0]}") from failure[0]
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None or self._loop is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _startup(self) -> None:
        limits = self.limits
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=limits.timeout_s), auto_decompress=False
        )
        self.http = HttpProxy(self)
        self._runner = web.AppRunner(
            self.http.app(),
            access_log=None,
            max_field_size=limits.max_header_bytes,
            auto_decompress=False,  # request bodies are refused compressed, never inflated
            keepalive_timeout=limits.header_timeout_s,
        )
        await self._runner.setup()
        guard = self.http.protocol_factory(self._runner.server)
        loop = asyncio.get_running_loop()
        tls = {"ssl": self.tls.server_context(), "ssl_handshake_timeout": limits.header_timeout_s} if self.tls else {}
        self._http_server = await loop.create_server(guard, self.host, self.http_port, backlog=1024, **tls)
        self.http_port = self._http_server.sockets[0].getsockname()[1]
        guard.start()

        sizes = [
            ("grpc.max_receive_message_length", limits.max_body_bytes),
            ("grpc.max_send_message_length", limits.max_body_bytes),
        ]
        idle_ms = int(limits.header_timeout_s * 1000)
        self._grpc_server = grpc.aio.server(
            options=[
                *sizes,
                ("grpc.max_metadata_size", limits.max_header_bytes),
                ("grpc.server_handshake_timeout_ms", idle_ms),
                ("grpc.max_connection_idle_ms", idle_ms),
            ],
            # A backstop under the gateway's own caps (which answer first, with a reason).
            maximum_concurrent_rpcs=2 * limits.max_concurrent,
        )
        self._grpc_server.add_generic_rpc_handlers((GrpcProxy(self).handlers(),))
        address = f"{self.host}:{self.grpc_port}"
        if self.tls is not None:
            self.grpc_port = self._grpc_server.add_secure_port(address, self.tls.grpc_credentials())
        else:
            self.grpc_port = self._grpc_server.add_insecure_port(address)
        await self._grpc_server.start()
        # Reconnect quickly after tritonserver restarts (gRPC's default backoff grows to 2 minutes).
        backoff = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        self.upstreams.grpc_options = sizes + backoff
        self.upstreams.probe_timeout_s = limits.probe_timeout_s
        await self.upstreams.start(self.session)
        self.session = self.upstreams.session(self.session)
        self.stub = self.upstreams.stub()

    async def _shutdown(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=1.0)
        if self.http is not None and self.http.guard is not None:
            self.http.guard.stop()
        if self._http_server is not None:
            self._http_server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.upstreams.stop()
        if self.session is not None:
            await self.session.close()

    # -- shared by both front ends ---------------------------------------------------------------

    def upstream_headers(self) -> dict[str, str]:
        """HTTP headers that open the upstream's inference APIs (the gateway's key)."""
        return {GATEWAY_KEY_HEADER: self.upstream_key} if self.upstream_key else {}

    def grpc_metadata(self) -> list[tuple[str, str]]:
        """gRPC metadata that opens the upstream's inference APIs (a fresh list: callers append)."""
        return [(GRPC_RESTRICTED_PREFIX + GATEWAY_KEY_HEADER, self.upstream_key)] if self.upstream_key else []

    def reload(self, timeout: float = 10.0) -> str:
        """Re-read the API key file on the gateway's loop (SIGHUP); open connections stay open."""
        if self._loop is None or not self._loop.is_running():
            return self.door.reload()

        async def on_loop() -> str:
            return self.door.reload()

        return asyncio.run_coroutine_threadsafe(on_loop(), self._loop).result(timeout)

    async def readiness(self) -> str | None:
        """None when the gateway can serve, else why not."""
        if self.health is not None:
            try:
                problem = self.health()
            except Exception as err:  # the launcher is mid-restart
                problem = f"health check failed: {err}"
            if problem:
                return problem
        probe = aiohttp.ClientTimeout(total=self.limits.probe_timeout_s)
        upstream = self.upstream_http
        try:
            async with self.session.get(f"http://{upstream}/v2/health/ready", timeout=probe) as resp:
                if resp.status != 200:
                    return "the inference server is not ready"
            url = f"http://{upstream}/v2/models/{self.model}/ready"
            async with self.session.get(url, headers=self.upstream_headers(), timeout=probe) as resp:
                if resp.status != 200:
                    return f"model '{self.model}' is not ready"
        except asyncio.TimeoutError:
            return f"the inference server did not answer a readiness probe within {self.limits.probe_timeout_s:g}s"
        except aiohttp.ClientError as err:
            return f"the inference server is unreachable ({type(err).__name__})"
        return None


if __name__ == "__main__":  # ``python -m veil.serving.gateway``: the documented command
    from veil.serving.cli import main

    sys.exit(main())
