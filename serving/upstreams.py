"""Several upstream Triton replicas behind one gateway: health checks, round robin, one retry.

The gateway is given comma-separated lists (``--upstream-http a:8000,b:8000 --upstream-grpc
a:8001,b:8001``, same order); one replica is the old single-upstream gateway (no probes). Every
``interval_s`` each replica's ``/v2/health/ready`` is probed (open on a restricted Triton); a
replica that fails it, or whose connection fails under a request, is taken out of the rotation
until a probe passes again. Requests go round robin over the healthy replicas (all of them when
none is healthy, so the caller gets the real error).

Inference through the gateway is idempotent (the defended answer depends on the text and the
caller's threat, never on which replica computes it: the adaptive state is shared through Redis),
so a request whose replica fails at the transport level (HTTP: the connection is refused, reset or
closed; gRPC: UNAVAILABLE) is sent once more to another healthy replica. A request that got an
answer, even an error, is never repeated.

The hook into the gateway is two duck-typed objects, so the proxies do not change:
:class:`PooledSession` stands in for the aiohttp session (``request``/``get``) and retries on
another replica's address, :class:`PooledStub` for the gRPC stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import grpc
from tritonclient.grpc import service_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    http: str
    grpc: str
    healthy: bool = True
    """Optimistic at start: the first probe runs at once."""
    reason: str = ""
    channel: grpc.aio.Channel | None = field(default=None, repr=False)
    stub: service_pb2_grpc.GRPCInferenceServiceStub | None = field(default=None, repr=False)


def parse_addresses(http: str, grpc_addresses: str) -> list[tuple[str, str]]:
    """``"a:1,b:1"``, ``"a:2,b:2"`` -> [("a:1", "a:2"), ("b:1", "b:2")]; the lists must pair up."""
    hs = [h.strip() for h in http.split(",") if h.strip()]
    gs = [g.strip() for g in grpc_addresses.split(",") if g.strip()]
    if not hs or len(hs) != len(gs):
        raise ValueError(
            f"upstream HTTP and gRPC lists must name the same replicas in order: {http!r} / {grpc_addresses!r}"
        )
    return list(zip(hs, gs, strict=True))


class UpstreamPool:
    """The replicas, their health and the rotation; runs its probes on the gateway's event loop."""

    def __init__(
        self,
        addresses: Sequence[tuple[str, str]],
        *,
        interval_s: float = 1.0,
        probe_timeout_s: float = 1.0,
        grpc_options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.replicas = [Replica(h, g) for h, g in addresses]
        self.interval_s, self.probe_timeout_s = interval_s, probe_timeout_s
        self.grpc_options = list(grpc_options)
        self.retries = 0
        """Requests sent again to another replica (for tests and logs)."""
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None
        self._checks: set[asyncio.Task] = set()

    # -- rotation --------------------------------------------------------------------------------

    def pick(self, exclude: Sequence[Replica] = ()) -> Replica | None:
        """The next healthy replica not in ``exclude``; when none of those is healthy, the next of
        them anyway (a probe may have timed out on a busy replica; a request that fails there meets
        the real error); None when ``exclude`` leaves nothing."""
        left = [r for r in self.replicas if r not in exclude]
        choices = [r for r in left if r.healthy] or left
        return choices[next(self._turn) % len(choices)] if choices else None

    def by_http(self, address: str) -> Replica | None:
        return next((r for r in self.replicas if r.http == address), None)

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            log.warning("upstream %s taken out: %s", replica.http, reason)
        replica.healthy, replica.reason = False, reason

    def problem(self) -> str | None:
        """None while some replica is healthy, else what each said."""
        if any(r.healthy for r in self.replicas):
            return None
        return "no upstream replica is ready: " + "; ".join(f"{r.http}: {r.reason}" for r in self.replicas)

    def status(self) -> list[dict[str, object]]:
        return [{"http": r.http, "grpc": r.grpc, "healthy": r.healthy, "reason": r.reason} for r in self.replicas]

    # -- lifecycle and probes ----------------------------------------------------------------------

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        for r in self.replicas:
            r.channel = grpc.aio.insecure_channel(r.grpc, options=self.grpc_options)
            r.stub = service_pb2_grpc.GRPCInferenceServiceStub(r.channel)
        if len(self.replicas) > 1:  # one replica is used whatever its probe says: nothing to choose
            await self.check_all()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, *self._checks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for r in self.replicas:
            if r.channel is not None:
                await r.channel.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_all()
            except Exception:  # a probe bug must not end the probing
                log.exception("upstream health check failed")

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas))

    async def check(self, replica: Replica) -> None:
        """One readiness probe; updates ``replica``."""
        timeout = aiohttp.ClientTimeout(total=self.probe_timeout_s)
        try:
            async with self._session.get(f"http://{replica.http}/v2/health/ready", timeout=timeout) as resp:
                ok, reason = resp.status == 200, f"readiness answered {resp.status}"
        except asyncio.TimeoutError:
            ok, reason = False, f"no readiness answer within {self.probe_timeout_s:g}s"
        except aiohttp.ClientError as err:
            ok, reason = False, f"unreachable ({type(err).__name__})"
        if ok:
            if not replica.healthy:
                log.warning("upstream %s back in rotation", replica.http)
            replica.healthy, replica.reason = True, ""
        else:
            self.mark_down(replica, reason)

    def check_soon(self, replica: Replica) -> None:
        """Probe ``replica`` now, in the background (a request to it failed)."""
        task = asyncio.get_running_loop().create_task(self.check(replica))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    # -- the hooks the gateway uses -----------------------------------------------------------------

    def session(self, session: aiohttp.ClientSession) -> PooledSession:
        return PooledSession(self, session)

    def stub(self) -> PooledStub:
        return PooledStub(self)


class PooledSession:
    """Stands in for the gateway's aiohttp session: a request whose replica's connection fails is
    sent once to another healthy replica (same method, path, headers and body)."""

    def __init__(self, pool: UpstreamPool, session: aiohttp.ClientSession) -> None:
        self.pool, self.raw = pool, session

    def request(self, method: str, url: str, **kwargs: object) -> _Retrying:
        return _Retrying(self, method, url, kwargs)

    def get(self, url: str, **kwargs: object) -> _Retrying:
        return self.request("GET", url, **kwargs)

    async def close(self) -> None:
        await self.raw.close()


class _Retrying:
    def __init__(self, owner: PooledSession, method: str, url: str, kwargs: dict) -> None:
        self.owner, self.method, self.url, self.kwargs = owner, method, url, kwargs
        self._cm = None

    async def _send(self, url: str) -> aiohttp.ClientResponse:
        self._cm = self.owner.raw.request(self.method, url, **self.kwargs)
        return await self._cm.__aenter__()

    async def __aenter__(self) -> aiohttp.ClientResponse:
        pool = self.owner.pool
        parts = urlsplit(self.url)
        replica = pool.by_http(parts.netloc)
        try:
            return await self._send(self.url)
        except aiohttp.ClientConnectionError as err:
            if replica is None:
                raise
            pool.mark_down(replica, f"{type(err).__name__} under a request")
            other = pool.pick(exclude=[replica])
            if other is None:
                raise
            pool.retries += 1
            return await self._send(urlunsplit(parts._replace(netloc=other.http)))

    async def __aexit__(self, *exc: object) -> None:
        if self._cm is not None:
            await self._cm.__aexit__(*exc)


class PooledStub:
    """Stands in for the gateway's gRPC stub: ``await stub.ModelInfer(request, metadata=..., timeout=...)``
    on the next healthy replica; UNAVAILABLE is tried once more on another, within the same deadline."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def __getattr__(self, rpc: str):
        pool = self.pool

        async def call(request, *, metadata=None, timeout: float | None = None):
            replica = pool.pick()
            started = time.monotonic()
            try:
                return await getattr(replica.stub, rpc)(request, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                # UNAVAILABLE is also a restricted-protocol refusal: let a probe decide the replica's fate.
                pool.check_soon(replica)
                other = pool.pick(exclude=[replica])
                left = None if timeout is None else timeout - (time.monotonic() - started)
                if other is None or (left is not None and left <= 0):
                    raise
                pool.retries += 1
                return await getattr(other.stub, rpc)(request, metadata=metadata, timeout=left)

        return call
