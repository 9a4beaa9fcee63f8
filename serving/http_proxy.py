"""The HTTP half of the gateway: KServe v2 routes for one model, checked, then forwarded with the key.

Requests are read and checked here before anything reaches Triton, so a malformed one is the
caller's 4xx rather than Triton's 500.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from veil.serving.policy import check_infer_header, http_route
from veil.wire import CLIENT_ID_KEY

if TYPE_CHECKING:
    from veil.serving.gateway import Gateway

_FORWARD_REQUEST_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Accept-Encoding")
_FORWARD_RESPONSE_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")


def error(status: int, message: str) -> web.Response:
    """Every refusal is JSON ``{"error": ...}``, as Triton's own are."""
    return web.json_response({"error": message}, status=status)


class HttpProxy:
    """aiohttp handlers over a :class:`Gateway` (its upstream session, key, limits and readiness)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.gw.limits.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    def _not_exposed(self, request: web.Request) -> web.Response:
        return error(
            404, f"not found: {request.method} {request.rel_url.raw_path} (this gateway serves only '{self.gw.model}')"
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        route = http_route(request.method, request.rel_url.raw_path, self.gw.model)
        if route is None:
            return self._not_exposed(request)
        if route.action in ("ready", "/ready"):
            problem = await self.gw.readiness()
            return error(503, problem) if problem else web.Response(status=200)
        if route.action == "/infer":
            return await self._infer(request, route.upstream)
        headers = {} if route.action == "live" else self.gw.upstream_headers()
        return await self._forward("GET", route.upstream, headers=headers)

    async def _infer(self, request: web.Request, path: str) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, f"request body is over {self.gw.limits.max_body_bytes} bytes")
        size = request.headers.get("Inference-Header-Content-Length")
        try:
            json_size = len(body) if size is None else int(size)
            if not 0 <= json_size <= len(body):
                raise ValueError
        except ValueError:
            return error(400, f"Inference-Header-Content-Length {size!r} does not fit the {len(body)}-byte body")
        try:
            doc = json.loads(body[:json_size])
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return error(400, f"malformed inference request: the JSON header is not valid JSON ({err})")
        problem = check_infer_header(doc)
        if problem:
            return error(400, f"malformed inference request: {problem}")
        try:
            client = self.gw.client_id(
                request.headers.get(CLIENT_ID_KEY), CLIENT_ID_KEY in doc.get("parameters", {}), request.remote
            )
        except ValueError as err:
            return error(400, str(err))
        headers = {k: request.headers[k] for k in _FORWARD_REQUEST_HEADERS if k in request.headers}
        headers.update(self.gw.upstream_headers())
        if client is not None:
            headers[CLIENT_ID_KEY] = client
        return await self._forward("POST", path, headers=headers, data=body)

    async def _forward(self, method: str, path: str, *, headers: dict[str, str], data: bytes | None = None):
        try:
            async with self.gw.session.request(
                method, f"http://{self.gw.upstream_http}{path}", headers=headers, data=data
            ) as resp:
                payload = await resp.read()
                out = {k: resp.headers[k] for k in _FORWARD_RESPONSE_HEADERS if k in resp.headers}
                return web.Response(status=resp.status, body=payload, headers=out)
        except asyncio.TimeoutError:
            return error(504, "the inference server did not answer in time")
        except aiohttp.ClientError as err:
            return error(502, f"the inference server is unavailable: {err}")
