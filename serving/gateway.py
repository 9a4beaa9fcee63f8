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
adaptive intensity: the ``veil-client-id`` header (or request parameter) if the caller sent one,
else its peer address (``--client-id-source peer`` assigns the peer address always).

Run it with :class:`ProductionServer` (internal tritonserver + gateway) or ``python -m
veil.serving.gateway --repository ...``; see README.md, "Production deployment (no bypass)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2, service_pb2_grpc

from veil.model_repository.spec import DEFENDED
from veil.python_backend.adaptive import AdaptiveConfig, normalise_client_id
from veil.serving.launcher import Health, ServerError, TritonServer, repositories_for
from veil.wire import CLIENT_ID_KEY

GATEWAY_KEY_HEADER = "veil-gateway-key"
"""Header the internal Triton requires for inference, metadata and model-config (the gateway's key)."""
ADMIN_KEY_HEADER = "veil-admin-key"
"""Header the internal Triton requires for its admin APIs; no process is given this key by default."""
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"
INFERENCE_APIS = ("inference", "metadata", "model-config")
ADMIN_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
DEFAULT_MAX_BODY = 64 << 20
"""256 texts of 200,000 bytes fit; larger bodies are refused with 413 / RESOURCE_EXHAUSTED."""
MAX_HEADER_BYTES = 64 << 10
ALLOWED_RPCS = ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig", "ModelInfer")
DENIED_RPCS = tuple(
    name
    for name in dir(service_pb2_grpc.GRPCInferenceServiceServicer)
    if not name.startswith("_") and name not in ALLOWED_RPCS
)
CLIENT_ID_SOURCES = ("caller", "peer")
_MODEL_ROUTE = re.compile(
    r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[0-9]{1,9}))?(?P<action>/ready|/config|/infer)?"
)
_FORWARD_REQUEST_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Accept-Encoding")
_FORWARD_RESPONSE_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")


def internal_triton_args(gateway_key: str, admin_key: str) -> list[str]:
    """tritonserver flags for the Triton behind the gateway (defence in depth: even a process that
    reaches its loopback ports cannot infer without the gateway's key nor use an admin API)."""
    inference, admin = ",".join(INFERENCE_APIS), ",".join(ADMIN_APIS)
    return [
        "--model-control-mode=none",
        f"--http-restricted-api={admin}:{ADMIN_KEY_HEADER}={admin_key}",
        f"--http-restricted-api={inference}:{GATEWAY_KEY_HEADER}={gateway_key}",
        f"--grpc-restricted-protocol={admin}:{ADMIN_KEY_HEADER}={admin_key}",
        f"--grpc-restricted-protocol={inference}:{GATEWAY_KEY_HEADER}={gateway_key}",
        f"--http-header-forward-pattern={CLIENT_ID_KEY}",
        f"--grpc-header-forward-pattern={CLIENT_ID_KEY}",
    ]


def check_infer_header(doc: object) -> str | None:
    """Why a KServe v2 JSON inference header is unacceptable, or None. Triton answers malformed
    parameters with a 500; the gateway answers them as the caller's error, and refuses
    shared-memory references (no caller can register a region through it anyway)."""
    if not isinstance(doc, dict):
        return "the inference request must be a JSON object"
    if not isinstance(doc.get("parameters", {}), dict):
        return "'parameters' must be a JSON object"
    for key in ("inputs", "outputs"):
        items = doc.get(key, [])
        if not isinstance(items, list):
            return f"'{key}' must be a JSON array"
        for item in items:
            if not isinstance(item, dict):
                return f"every entry of '{key}' must be a JSON object"
            params = item.get("parameters", {})
            if not isinstance(params, dict):
                return f"'parameters' of an entry of '{key}' must be a JSON object"
            if any(str(k).startswith("shared_memory") for k in params):
                return "shared memory is not available through the Veil gateway; send tensors in the request"
    return None


def _peer_host(peer: str | None) -> str:
    """gRPC peers look like ``ipv4:127.0.0.1:5555`` or ``ipv6:[::1]:5555``; HTTP gives the host."""
    if not peer:
        return "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
    return peer


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
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_client_id_bytes: int = AdaptiveConfig.max_client_id_bytes,
        health: Callable[[], str | None] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        if client_id_source not in CLIENT_ID_SOURCES:
            raise ValueError(f"client_id_source must be one of {CLIENT_ID_SOURCES}")
        self.upstream_http = upstream_http
        self.upstream_grpc = upstream_grpc
        self.model = model
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.upstream_key = upstream_key
        self.client_id_source = client_id_source
        self.max_body_bytes = max_body_bytes
        self.max_client_id_bytes = max_client_id_bytes
        self.health = health
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

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
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False
        )
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, max_field_size=MAX_HEADER_BYTES)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.http_port)
        await site.start()
        self.http_port = self._runner.addresses[0][1]

        limits = [
            ("grpc.max_receive_message_length", self.max_body_bytes),
            ("grpc.max_send_message_length", self.max_body_bytes),
        ]
        self._grpc_server = grpc.aio.server(options=[*limits, ("grpc.max_metadata_size", MAX_HEADER_BYTES)])
        self._grpc_server.add_generic_rpc_handlers((_GrpcService(self).handlers(),))
        self.grpc_port = self._grpc_server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        await self._grpc_server.start()
        # Reconnect quickly after tritonserver restarts (gRPC's default backoff grows to 2 minutes).
        backoff = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
        self._channel = grpc.aio.insecure_channel(self.upstream_grpc, options=limits + backoff)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

    async def _shutdown(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close()
        if self._session is not None:
            await self._session.close()

    # -- shared rules ----------------------------------------------------------------------------

    def _upstream_headers(self) -> dict[str, str]:
        return {GATEWAY_KEY_HEADER: self.upstream_key} if self.upstream_key else {}

    def _grpc_metadata(self) -> list[tuple[str, str]]:
        return [(GRPC_RESTRICTED_PREFIX + GATEWAY_KEY_HEADER, self.upstream_key)] if self.upstream_key else []

    def client_id(self, header: str | None, in_parameters: bool, peer: str | None) -> str | None:
        """The ``veil-client-id`` header to send upstream (None: leave the caller's parameter).

        Raises ValueError (the caller's error) for a bad header, or for any caller-chosen id when
        ids are assigned from the peer address."""
        if self.client_id_source == "peer":
            if header is not None or in_parameters:
                raise ValueError(f"client ids are assigned by this gateway; do not send '{CLIENT_ID_KEY}'")
            return f"peer:{_peer_host(peer)}"
        if header is not None:
            return normalise_client_id(header, max_bytes=self.max_client_id_bytes)
        if in_parameters:
            return None  # the defense validates the parameter itself
        return f"peer:{_peer_host(peer)}"

    async def _readiness(self) -> str | None:
        """None when the gateway can serve, else why not."""
        if self.health is not None:
            try:
                problem = self.health()
            except Exception as err:  # the launcher is mid-restart
                problem = f"health check failed: {err}"
            if problem:
                return problem
        try:
            async with self._session.get(f"http://{self.upstream_http}/v2/health/ready") as resp:
                if resp.status != 200:
                    return "the inference server is not ready"
            url = f"http://{self.upstream_http}/v2/models/{self.model}/ready"
            async with self._session.get(url, headers=self._upstream_headers()) as resp:
                if resp.status != 200:
                    return f"model '{self.model}' is not ready"
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            return f"the inference server is unreachable: {err}"
        return None

    # -- HTTP ------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def _not_exposed(self, request: web.Request) -> web.Response:
        return self._error(
            404, f"not found: {request.method} {request.rel_url.raw_path} (this gateway serves only '{self.model}')"
        )

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path  # undecoded: %2F or .. never turn into another route
        if request.method == "GET" and path in ("/v2/health/live", "/v2/health/ready"):
            return await self._health(path)
        match = _MODEL_ROUTE.fullmatch(path)
        if match is None or match["model"] != self.model:
            return self._not_exposed(request)
        action = match["action"] or ""
        if (request.method, action) not in {("GET", ""), ("GET", "/ready"), ("GET", "/config"), ("POST", "/infer")}:
            return self._not_exposed(request)
        upstream = f"/v2/models/{self.model}" + (f"/versions/{match['version']}" if match["version"] else "")
        if action == "/ready":
            problem = await self._readiness()
            return self._error(503, problem) if problem else web.Response(status=200)
        if action == "/infer":
            return await self._infer(request, upstream + action)
        return await self._forward("GET", upstream + action, headers=self._upstream_headers())

    async def _health(self, path: str) -> web.Response:
        if path.endswith("ready"):
            problem = await self._readiness()
            return self._error(503, problem) if problem else web.Response(status=200)
        return await self._forward("GET", path, headers={})

    async def _infer(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, f"request body is over {self.max_body_bytes} bytes")
        size = request.headers.get("Inference-Header-Content-Length")
        try:
            json_size = len(body) if size is None else int(size)
            if not 0 <= json_size <= len(body):
                raise ValueError
        except ValueError:
            return self._error(400, f"Inference-Header-Content-Length {size!r} does not fit the {len(body)}-byte body")
        try:
            doc = json.loads(body[:json_size])
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return self._error(400, f"malformed inference request: the JSON header is not valid JSON ({err})")
        problem = check_infer_header(doc)
        if problem:
            return self._error(400, f"malformed inference request: {problem}")
        try:
            client = self.client_id(
                request.headers.get(CLIENT_ID_KEY), CLIENT_ID_KEY in doc.get("parameters", {}), request.remote
            )
        except ValueError as err:
            return self._error(400, str(err))
        headers = {k: request.headers[k] for k in _FORWARD_REQUEST_HEADERS if k in request.headers}
        headers.update(self._upstream_headers())
        if client is not None:
            headers[CLIENT_ID_KEY] = client
        return await self._forward("POST", path, headers=headers, data=body)

    async def _forward(self, method: str, path: str, *, headers: dict[str, str], data: bytes | None = None):
        try:
            async with self._session.request(
                method, f"http://{self.upstream_http}{path}", headers=headers, data=data
            ) as resp:
                payload = await resp.read()
                out = {k: resp.headers[k] for k in _FORWARD_RESPONSE_HEADERS if k in resp.headers}
                return web.Response(status=resp.status, body=payload, headers=out)
        except asyncio.TimeoutError:
            return self._error(504, "the inference server did not answer in time")
        except aiohttp.ClientError as err:
            return self._error(502, f"the inference server is unavailable: {err}")


class _GrpcService:
    """The gRPC half of :class:`Gateway`: six RPCs for one model, forwarded with the gateway's key.

    Requests arrive as bytes and are parsed here, so a malformed message is the caller's
    INVALID_ARGUMENT rather than gRPC's generic INTERNAL "failed to deserialize"."""

    SERVICE = "inference.GRPCInferenceService"

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def handlers(self) -> grpc.GenericRpcHandler:
        table = {}
        for name in ALLOWED_RPCS:
            request_type = getattr(service_pb2, f"{name}Request")
            response_type = getattr(service_pb2, f"{name}Response")
            table[name] = grpc.unary_unary_rpc_method_handler(
                self._parsed(name, request_type, getattr(self, name)),
                response_serializer=response_type.SerializeToString,
            )
        for name in DENIED_RPCS:
            make = (
                grpc.stream_stream_rpc_method_handler
                if name == "ModelStreamInfer"
                else grpc.unary_unary_rpc_method_handler
            )
            table[name] = make(self._denied(name))
        return grpc.method_handlers_generic_handler(self.SERVICE, table)

    @staticmethod
    def _parsed(name: str, request_type, handler):
        async def parse_then_handle(raw: bytes, context):
            try:
                request = request_type.FromString(raw)
            except Exception as err:  # protobuf's DecodeError, or worse
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} request: {err}")
            return await handler(request, context)

        return parse_then_handle

    @staticmethod
    def _denied(name: str):
        async def deny(request, context):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{name} is not exposed by the Veil gateway")

        return deny

    async def _check_model(self, name: str, context) -> None:
        if name != self.gw.model:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model '{name}' is not served here (this gateway serves only '{self.gw.model}')",
            )

    async def _call(self, rpc: str, request, context, metadata: list[tuple[str, str]]):
        remaining = context.time_remaining()
        timeout = min(self.gw.timeout_s, remaining) if remaining is not None else self.gw.timeout_s
        try:
            return await getattr(self.gw._stub, rpc)(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            if err.code() == grpc.StatusCode.UNAVAILABLE and "connect" in details:
                details = f"the inference server is unavailable: {details}"
            await context.abort(err.code(), details)

    async def ServerLive(self, request, context):
        return await self._call("ServerLive", request, context, [])

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=await self.gw._readiness() is None)

    async def ModelReady(self, request, context):
        await self._check_model(request.name, context)
        return service_pb2.ModelReadyResponse(ready=await self.gw._readiness() is None)

    async def ModelMetadata(self, request, context):
        await self._check_model(request.name, context)
        return await self._call("ModelMetadata", request, context, self.gw._grpc_metadata())

    async def ModelConfig(self, request, context):
        await self._check_model(request.name, context)
        return await self._call("ModelConfig", request, context, self.gw._grpc_metadata())

    async def ModelInfer(self, request, context):
        await self._check_model(request.model_name, context)
        for kind, tensors in (("input", request.inputs), ("output", request.outputs)):
            for tensor in tensors:
                if any(k.startswith("shared_memory") for k in tensor.parameters):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{kind} '{tensor.name}': shared memory is not available through the Veil gateway",
                    )
        header = next((v for k, v in context.invocation_metadata() or () if k == CLIENT_ID_KEY), None)
        try:
            client = self.gw.client_id(header, CLIENT_ID_KEY in request.parameters, context.peer())
        except ValueError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        metadata = self.gw._grpc_metadata()
        if client is not None:
            metadata.append((CLIENT_ID_KEY, client))
        return await self._call("ModelInfer", request, context, metadata)


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
    """The documented production deployment: tritonserver on loopback, restricted with fresh random
    keys, and the :class:`Gateway` in front of it (the only listener callers should reach).

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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Serve veil_defended and nothing else: tritonserver on loopback behind the Veil gateway"
    )
    p.add_argument("--repository", help="folder written by veil-build --mode production")
    p.add_argument(
        "--build-dir",
        help="or a veil-build folder: its repository is rewritten in production mode into <build-dir>/production/",
    )
    p.add_argument("--platform", default="embedded", choices=("embedded", "nvidia"))
    p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on (0.0.0.0 for all)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--log-file", default="build/tritonserver.log")
    p.add_argument("--client-id-source", choices=CLIENT_ID_SOURCES, default="caller")
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--allow-benchmark", action="store_true", help="serve a benchmark-mode repository anyway")
    p.add_argument("--upstream-http", help="front an already running, restricted Triton (HTTP host:port)")
    p.add_argument("--upstream-grpc", help="...and its gRPC host:port; the key comes from $VEIL_GATEWAY_KEY")
    args = p.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    if args.upstream_http or args.upstream_grpc:
        if not (args.upstream_http and args.upstream_grpc):
            p.error("--upstream-http and --upstream-grpc go together")
        gateway = Gateway(
            args.upstream_http,
            args.upstream_grpc,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            upstream_key=os.environ.get("VEIL_GATEWAY_KEY"),
            client_id_source=args.client_id_source,
        ).start()
        print(f"Veil gateway: HTTP {gateway.http_url}, gRPC {gateway.grpc_url} -> {args.upstream_http}", flush=True)
        stop.wait()
        gateway.stop()
        return 0

    if args.build_dir:
        from veil.model_repository.writer import rewrite_repository

        out = Path(args.build_dir) / "production" / "model_repository"
        args.repository = rewrite_repository(args.build_dir, out, mode="production", variants=("veil",))
    if not args.repository:
        p.error("--repository, --build-dir or --upstream-http/--upstream-grpc is required")
    server = ProductionServer(
        args.repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        platform=args.platform,
        log_file=args.log_file,
        client_id_source=args.client_id_source,
        allow_benchmark=args.allow_benchmark,
        max_restarts=args.max_restarts,
    )
    server.start()
    print(
        f"Veil gateway: HTTP {server.http_url}, gRPC {server.grpc_url} (only '{server.gateway.model}');"
        f" tritonserver pid {server.triton.process.pid} on loopback; Ctrl-C stops both",
        flush=True,
    )
    code = 0
    try:
        while not stop.wait(0.5):
            t0 = time.monotonic()
            try:
                report = server.recover()
            except ServerError as err:
                print(f"giving up: {err}\n{server.triton.log_tail()}", file=sys.stderr, flush=True)
                code = 1
                break
            if report is not None:
                print(
                    f"tritonserver was unhealthy ({report.describe()}); restarted in {time.monotonic() - t0:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
