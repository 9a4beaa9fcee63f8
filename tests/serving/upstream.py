"""A fake Triton for the gateway tests: records what reaches it, answers when its gate is open."""

from __future__ import annotations

import asyncio
import threading

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2

from veil.model_repository.spec import DEFENDED


class FakeUpstream:
    """A stand-in Triton on loopback that records every request reaching it: ``http_seen`` (method,
    raw path, headers, body), ``grpc_seen`` (serialised ModelInferRequest, metadata). Its answers
    wait while the gate is closed (``close_gate``), so requests pile up in flight."""

    def __init__(self) -> None:
        self.http_seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.grpc_seen: list[tuple[bytes, dict[str, str]]] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.gate = asyncio.Event()
        self.gate.set()
        self.loop.run_until_complete(self._start())
        started.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        async def http(request: web.Request) -> web.Response:
            self.http_seen.append(
                (request.method, request.rel_url.raw_path, dict(request.headers), await request.read())
            )
            await self.gate.wait()
            return web.json_response({"model_name": DEFENDED, "outputs": []})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", http)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.http_url = f"127.0.0.1:{self.runner.addresses[0][1]}"

        async def infer(request, context):
            self.grpc_seen.append((request.SerializeToString(), dict(context.invocation_metadata())))
            await self.gate.wait()
            return service_pb2.ModelInferResponse(model_name=request.model_name)

        handler = grpc.unary_unary_rpc_method_handler(
            infer,
            request_deserializer=service_pb2.ModelInferRequest.FromString,
            response_serializer=service_pb2.ModelInferResponse.SerializeToString,
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler}),)
        )
        self.grpc_url = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()

    def close_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.clear)

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self.gate.set)

    def close(self) -> None:
        async def stop() -> None:
            await self.server.stop(0)
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
