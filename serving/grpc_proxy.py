"""The gRPC half of the gateway: six RPCs for one model, forwarded with the gateway's key.

Requests arrive as bytes and are parsed here, so a malformed message is the caller's
INVALID_ARGUMENT rather than gRPC's generic INTERNAL "failed to deserialize"; then they are checked
with the same rules and messages as over HTTP (:mod:`.validation`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING

import grpc
from tritonclient.grpc import service_pb2

from veil.serving import validation
from veil.serving.auth import Identity
from veil.serving.limits import RETRY_AFTER, grpc_rows
from veil.serving.policy import ALLOWED_RPCS, DENIED_RPCS, scrub
from veil.serving.tls import grpc_subject
from veil.serving.validation import CallerError
from veil.wire import CLIENT_ID_KEY

if TYPE_CHECKING:
    from veil.serving.gateway import Gateway

SERVICE = "inference.GRPCInferenceService"
OPEN_RPCS = ("ServerLive", "ServerReady")
"""Health, answered without authentication (load balancers probe it)."""
log = logging.getLogger(__name__)
_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("veil_identity", default=None)
"""The authenticated caller of the RPC being handled (each RPC runs in its own task)."""


def _authorization(context) -> str | None:
    return next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)


class GrpcProxy:
    """grpc.aio handlers over a :class:`Gateway` (its upstream stub, key, limits and readiness)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.limits = gateway.limits

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
        return grpc.method_handlers_generic_handler(SERVICE, table)

    def _parsed(self, name: str, request_type, handler):
        """Parse, then handle within the deadline; a :class:`CallerError` is the caller's status, an
        unexpected failure a bare INTERNAL (logged, never shown)."""
        timeout = self.limits.timeout_s

        async def parse_then_handle(raw: bytes, context):
            identity = None
            try:
                if name not in OPEN_RPCS:
                    identity = self.gw.door.identify(_authorization(context), grpc_subject(context))
                    _identity.set(identity)
                try:
                    request = request_type.FromString(raw)
                except Exception as err:  # protobuf's DecodeError, or worse
                    raise CallerError(f"malformed {name} request: {err}") from None
                return await asyncio.wait_for(handler(request, context), timeout)
            except grpc.aio.AbortError:
                raise
            except CallerError as err:
                self.gw.door.audit(identity, err, route=name, protocol="grpc", peer=context.peer())
                trailing = ((RETRY_AFTER, str(err.retry_after)),) if err.retry_after is not None else ()
                await context.abort(grpc.StatusCode[err.grpc_code], str(err), trailing_metadata=trailing)
            except asyncio.TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within the gateway's {timeout:g}s deadline"
                )
            except Exception:
                log.exception("unexpected failure in %s", name)
                await context.abort(grpc.StatusCode.INTERNAL, "internal gateway error")

        return parse_then_handle

    def _denied(self, name: str):
        async def deny(request, context):
            err = CallerError(f"{name} is not exposed by the Veil gateway", status=403, reason="not-exposed")
            self.gw.door.audit(None, err, route=name, protocol="grpc", peer=context.peer())
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))

        return deny

    async def _check_model(self, name: str, context, version: str = "") -> None:
        validation.check_version(version)
        if name != self.gw.model:
            raise CallerError(
                f"model '{name}' is not served here (this gateway serves only '{self.gw.model}')", status=404
            )

    async def _call(self, rpc: str, request, context, metadata: list[tuple[str, str]], limit: float | None = None):
        remaining = context.time_remaining()
        limit = limit or self.limits.timeout_s
        timeout = min(limit, remaining) if remaining is not None else limit
        try:
            return await getattr(self.gw.stub, rpc)(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            details = scrub(err.details() or "")
            if err.code() == grpc.StatusCode.UNAVAILABLE and "connect" in details:
                details = "the inference server is unavailable (cannot connect)"
            await context.abort(err.code(), details)

    async def ServerLive(self, request, context):
        return await self._call("ServerLive", request, context, [], self.limits.probe_timeout_s)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=await self.gw.readiness() is None)

    async def ModelReady(self, request, context):
        await self._check_model(request.name, context, request.version)
        return service_pb2.ModelReadyResponse(ready=await self.gw.readiness() is None)

    async def ModelMetadata(self, request, context):
        await self._check_model(request.name, context, request.version)
        return await self._call("ModelMetadata", request, context, self.gw.grpc_metadata())

    async def ModelConfig(self, request, context):
        await self._check_model(request.name, context, request.version)
        return await self._call("ModelConfig", request, context, self.gw.grpc_metadata())

    async def ModelInfer(self, request, context):
        await self._check_model(request.model_name, context)
        in_parameters = validation.check_grpc_infer(request, limits=self.limits)
        header = next((v for k, v in context.invocation_metadata() or () if k == CLIENT_ID_KEY), None)
        identity = _identity.get()
        parameter = request.parameters[CLIENT_ID_KEY].string_param if in_parameters else None
        client, drop = self.gw.door.client_id(identity, header, parameter, context.peer())
        if drop and in_parameters:
            del request.parameters[CLIENT_ID_KEY]
        metadata = self.gw.grpc_metadata()
        if client is not None:
            metadata.append((CLIENT_ID_KEY, client))
        caller = client if client is not None else parameter
        with self.gw.door.admit(identity, caller, grpc_rows(request)):
            return await self._call("ModelInfer", request, context, metadata)
