"""The gRPC half of the gateway: six RPCs for one model, forwarded with the gateway's key.

Requests arrive as bytes and are parsed here, so a malformed message is the caller's
INVALID_ARGUMENT rather than gRPC's generic INTERNAL "failed to deserialize".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from tritonclient.grpc import service_pb2

from veil.serving.policy import ALLOWED_RPCS, DENIED_RPCS
from veil.wire import CLIENT_ID_KEY

if TYPE_CHECKING:
    from veil.serving.gateway import Gateway

SERVICE = "inference.GRPCInferenceService"


class GrpcProxy:
    """grpc.aio handlers over a :class:`Gateway` (its upstream stub, key, limits and readiness)."""

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
        return grpc.method_handlers_generic_handler(SERVICE, table)

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
        limit = self.gw.limits.timeout_s
        timeout = min(limit, remaining) if remaining is not None else limit
        try:
            return await getattr(self.gw.stub, rpc)(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            if err.code() == grpc.StatusCode.UNAVAILABLE and "connect" in details:
                details = f"the inference server is unavailable: {details}"
            await context.abort(err.code(), details)

    async def ServerLive(self, request, context):
        return await self._call("ServerLive", request, context, [])

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=await self.gw.readiness() is None)

    async def ModelReady(self, request, context):
        await self._check_model(request.name, context)
        return service_pb2.ModelReadyResponse(ready=await self.gw.readiness() is None)

    async def ModelMetadata(self, request, context):
        await self._check_model(request.name, context)
        return await self._call("ModelMetadata", request, context, self.gw.grpc_metadata())

    async def ModelConfig(self, request, context):
        await self._check_model(request.name, context)
        return await self._call("ModelConfig", request, context, self.gw.grpc_metadata())

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
        metadata = self.gw.grpc_metadata()
        if client is not None:
            metadata.append((CLIENT_ID_KEY, client))
        return await self._call("ModelInfer", request, context, metadata)
