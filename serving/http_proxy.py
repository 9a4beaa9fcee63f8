"""The HTTP half of the gateway: KServe v2 routes for one model, checked, then forwarded with the key.

Requests are read and checked here (:mod:`.validation`) before anything reaches Triton, so a
malformed one is the caller's 4xx rather than Triton's 500, and what Triton parses is the JSON the
gateway checked (re-serialised). Request bodies are never decompressed (a 61 kB gzip body carried a
60 MiB parameter into every ensemble step); responses are compressed only when the caller asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from veil.serving import validation
from veil.serving.guards import ConnectionGuard
from veil.serving.limits import http_rows
from veil.serving.policy import HEALTH_PATHS, http_route, scrub
from veil.serving.tls import http_subject
from veil.serving.validation import CallerError
from veil.wire import CLIENT_ID_KEY

if TYPE_CHECKING:
    from veil.serving.gateway import Gateway

log = logging.getLogger(__name__)
IDENTITY = web.RequestKey("veil.identity", object)
"""The authenticated caller of a request (None for health routes, or with authentication off)."""
_FORWARD_RESPONSE_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")
HEADER_LENGTH = "Inference-Header-Content-Length"


def error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    """Every refusal is JSON ``{"error": ...}``, as Triton's own are."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="veil"'}
    return web.json_response({"error": message}, status=status, headers=headers)


class HttpProxy:
    """aiohttp handlers over a :class:`Gateway` (its upstream session, key, limits and readiness)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.limits = gateway.limits
        self.guard: ConnectionGuard | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[self._deadline])
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    def protocol_factory(self, factory) -> ConnectionGuard:
        """Wrap aiohttp's protocol factory with the connection guard (see :mod:`.guards`)."""
        self.guard = ConnectionGuard(
            factory, max_connections=self.limits.max_connections, header_timeout_s=self.limits.header_timeout_s
        )
        return self.guard

    @web.middleware
    async def _deadline(self, request: web.Request, handler) -> web.StreamResponse:
        """Every request is answered within ``timeout_s``; a caller's mistake is its 4xx, and an
        unexpected failure a bare 500 (logged, never shown)."""
        guard = self.guard.request(request.protocol) if self.guard else contextlib.nullcontext()
        with guard:
            identity = None
            try:
                if not (request.method == "GET" and request.rel_url.raw_path in HEALTH_PATHS):
                    authorization = request.headers.get("Authorization")
                    identity = self.gw.door.identify(authorization, http_subject(request.transport))
                request[IDENTITY] = identity
                return await asyncio.wait_for(handler(request), self.limits.timeout_s)
            except CallerError as err:
                route = f"{request.method} {request.rel_url.raw_path}"
                self.gw.door.audit(identity, err, route=route, protocol="http", peer=request.remote)
                return error(err.status, str(err), retry_after=err.retry_after)
            except asyncio.TimeoutError:
                return error(504, f"no answer within the gateway's {self.limits.timeout_s:g}s deadline")
            except Exception:
                log.exception("unexpected failure on %s %s", request.method, request.rel_url.raw_path)
                return error(500, "internal gateway error")

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        route = http_route(request.method, request.rel_url.raw_path, self.gw.model)
        if route is None:
            raise CallerError(
                f"not found: {request.method} {request.rel_url.raw_path[:200]} (this gateway serves only"
                f" '{self.gw.model}')",
                status=404,
            )
        if route.action in ("ready", "/ready"):
            problem = await self.gw.readiness()
            return error(503, problem) if problem else web.Response(status=200)
        if route.action == "/infer":
            return await self._infer(request, route.upstream)
        if route.action == "live":
            return await self._forward(request, "GET", route.upstream, {}, timeout=self.limits.probe_timeout_s)
        return await self._forward(request, "GET", route.upstream, self.gw.upstream_headers())

    async def _read(self, request: web.Request) -> bytes:
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise CallerError(
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the request body uncompressed", status=415
            )
        size = request.content_length
        if size is not None and size > self.limits.max_body_bytes:
            raise CallerError(f"request body is over {self.limits.max_body_bytes} bytes", status=413)
        try:
            return await asyncio.wait_for(request.read(), self.limits.body_timeout_s)
        except web.HTTPRequestEntityTooLarge:
            raise CallerError(f"request body is over {self.limits.max_body_bytes} bytes", status=413) from None
        except asyncio.TimeoutError:
            raise CallerError(
                f"the request body did not arrive within {self.limits.body_timeout_s:g}s", status=408
            ) from None

    async def _infer(self, request: web.Request, path: str) -> web.StreamResponse:
        body = await self._read(request)
        json_size = validation.parse_header_length(request.headers.get(HEADER_LENGTH), len(body))
        doc = validation.parse_json_header(body[:json_size], limits=self.limits)
        in_parameters = validation.check_http_infer(doc, len(body) - json_size, limits=self.limits)
        identity = request[IDENTITY]
        parameter = str(doc["parameters"][CLIENT_ID_KEY]) if in_parameters else None
        client, drop = self.gw.door.client_id(identity, request.headers.get(CLIENT_ID_KEY), parameter, request.remote)
        if drop and in_parameters:
            del doc["parameters"][CLIENT_ID_KEY]
        caller = client if client is not None else parameter
        header = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        headers = self.gw.upstream_headers()
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        if json_size < len(body) or HEADER_LENGTH in request.headers:
            headers[HEADER_LENGTH] = str(len(header))
        if client is not None:
            headers[CLIENT_ID_KEY] = client
        with self.gw.door.admit(identity, caller, http_rows(doc)):
            return await self._forward(request, "POST", path, headers, data=header + body[json_size:])

    async def _forward(
        self,
        request: web.Request,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        data: bytes | None = None,
        timeout: float | None = None,
    ) -> web.Response:
        # aiohttp's client would add its own Accept-Encoding: compress only when the caller asked.
        headers = {**headers, "Accept-Encoding": request.headers.get("Accept-Encoding", "identity")}
        started = time.monotonic()
        budget = timeout or self.limits.timeout_s
        try:
            async with self.gw.session.request(
                method,
                f"http://{self.gw.upstream_http}{path}",
                headers=headers,
                data=data,
                timeout=aiohttp.ClientTimeout(total=budget),
            ) as resp:
                payload = await resp.read()
                out = {k: resp.headers[k] for k in _FORWARD_RESPONSE_HEADERS if k in resp.headers}
                if resp.status >= 400 and "Content-Encoding" not in resp.headers:
                    payload = _scrubbed(payload)
                return web.Response(status=resp.status, body=payload, headers=out)
        except asyncio.TimeoutError:
            waited = time.monotonic() - started
            return error(504 if timeout is None else 503, f"the inference server did not answer within {waited:.1f}s")
        except aiohttp.ClientError as err:
            return error(502, f"the inference server is unavailable ({type(err).__name__})")


def _scrubbed(payload: bytes) -> bytes:
    try:
        doc = json.loads(payload)
        doc["error"] = scrub(str(doc["error"]))
        return json.dumps(doc).encode()
    except (ValueError, TypeError, KeyError):
        return scrub(payload.decode("utf-8", "replace")).encode()
