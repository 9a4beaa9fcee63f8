"""Issue 16, the parts that need no tritonserver: the restart budget and the supervisor's loop
(cases 1 and 2), the caps on connections and requests in flight (cases 1 and 4), and what reaches
the upstream (canonical client ids, case 11), against a gated fake upstream over HTTP and gRPC.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tritonclient.grpc import service_pb2

from veil.model_repository.spec import DEFENDED
from veil.serving.gateway import Gateway
from veil.serving.launcher import Health, ServerError
from veil.serving.policy import Limits
from veil.serving.supervisor import RestartBudget, Supervisor, raise_fd_limit, watch
from veil.wire import CLIENT_ID_KEY

from ..integration.wire import Wire
from .upstream import FakeUpstream

PROTOCOLS = ("http", "grpc")


# -- case 2: the restart budget is a sliding window, with backoff ------------------------------


def test_the_restart_budget_slides_and_backs_off():
    budget = RestartBudget(max_restarts=3, window_s=100, backoff_s=1, max_backoff_s=4)
    assert budget.wait(0) == 0 and not budget.spent(0)
    for t in (0, 10, 20):
        budget.record(t)
    assert budget.spent(50)  # three in the window
    assert not budget.spent(101)  # the first one left the window
    budget.record(200)
    budget.record(201)
    assert budget.wait(201) == pytest.approx(2.0)  # 1 s doubled once per restart in the window
    for t in range(202, 210):
        budget.times.append(t)
    assert budget.wait(209) == pytest.approx(4.0)  # capped


class FakeTriton:
    """What :class:`Supervisor` uses of a TritonServer, with faults on demand."""

    def __init__(self) -> None:
        self.dead = False
        self.answers = True
        self.restarts = 0
        self.process = type("P", (), {"pid": 4242})()
        self.store_down: str | None = None

    def health(self) -> Health:
        return Health(alive=not self.dead, exit_code=-9 if self.dead else None)

    def probe(self, timeout: float) -> bool:
        return self.answers

    def degraded(self, timeout: float) -> str | None:
        return self.store_down

    def restart(self) -> None:
        self.restarts += 1
        self.dead, self.answers = False, True


def test_a_degraded_state_store_is_reported_and_never_restarted():
    """Serving at threat 1 without Redis is safe: reported in the health path, not a reason to restart."""
    triton = FakeTriton()
    sup = Supervisor(triton)
    triton.store_down = "adaptive state store unreachable in mia_defense_0_0: outputs served at threat 1"
    assert sup.recover() is None and triton.restarts == 0
    report = sup.health()
    assert report.ok and report.degraded == triton.store_down
    assert report.describe().endswith("degraded: " + triton.store_down)
    triton.store_down = None
    assert sup.recover() is None and sup.health().degraded == ""


def test_a_fourth_death_far_apart_is_restarted_too():
    """Issue 16 case 2: the 4th stub death at any time used to end the stack."""
    triton = FakeTriton()
    sup = Supervisor(triton, budget=RestartBudget(max_restarts=3, window_s=0.3, backoff_s=0.0))
    for _ in range(5):
        triton.dead = True
        assert sup.recover() is not None
        time.sleep(0.35)
    assert triton.restarts == 5
    for _ in range(3):  # but three in the window: give up
        triton.dead = True
        sup.recover()
    triton.dead = True
    with pytest.raises(ServerError, match="not restarting again after 3 restarts within"):
        sup.recover()


def test_a_server_that_stops_answering_is_restarted_after_the_probes():
    triton = FakeTriton()
    sup = Supervisor(triton, budget=RestartBudget(backoff_s=0.0), probe_failures=2)
    triton.answers = False
    assert sup.recover() is None  # one unanswered probe is not yet a hang
    report = sup.recover()
    assert report is not None and "did not answer 2 liveness probes" in report.describe() and triton.restarts == 1
    assert sup.health().ok


def test_the_watch_loop_survives_unexpected_exceptions():
    """Issue 16 case 1: ``OSError: Too many open files`` from psutil ended the supervisor."""
    calls = []
    stop = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError(24, "Too many open files")
        stop.set()

    assert watch(step, stop, interval=0.01) == 0 and len(calls) == 3
    assert watch(lambda: (_ for _ in ()).throw(ServerError("budget spent")), threading.Event(), interval=0.01) == 1


def test_the_open_file_limit_is_raised_where_allowed():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        new_soft, _ = raise_fd_limit(4096)
        assert new_soft == (4096 if hard == resource.RLIM_INFINITY else min(4096, hard))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.open_gate()
    fake.close()


def _wire(gw: Gateway, protocol: str) -> Wire:
    return Wire(protocol, gw.http_url if protocol == "http" else gw.grpc_url)


# -- case 4: requests in flight are capped, per caller and in total ----------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_requests_in_flight_are_capped_per_caller_and_in_total(upstream, protocol):
    limits = Limits(max_concurrent=6, max_concurrent_per_caller=2, timeout_s=20)
    with Gateway(upstream.http_url, upstream.grpc_url, limits=limits) as gw, ThreadPoolExecutor(12) as pool:
        upstream.close_gate()
        try:

            def ask(client: str):
                with _wire(gw, protocol) as wire:
                    return wire.classify(DEFENDED, ["a"], headers={CLIENT_ID_KEY: client}, timeout=30)

            def hold(clients: str) -> list:
                futures = [pool.submit(ask, c) for c in clients]
                deadline = time.monotonic() + 10
                while gw.admission.in_flight < len(held) + len(futures) and time.monotonic() < deadline:
                    time.sleep(0.05)
                return futures

            held: list = []
            held += hold("aabbc")
            assert gw.admission.in_flight == 5
            busy = {"http": "429", "grpc": "RESOURCE_EXHAUSTED"}[protocol]
            same = ask("a")
            assert same.status == busy and "for this caller" in same.message, same
            held += hold("d")
            assert gw.admission.in_flight == 6
            other = ask("e")
            assert other.status == busy and "the gateway is busy" in other.message, other
        finally:
            upstream.open_gate()
        assert all(f.result(30).ok for f in held)
        assert gw.admission.in_flight == 0 and gw.admission.by_caller == {}


# -- case 1: connections are capped ------------------------------------------------------------


def test_connections_over_the_cap_are_closed_at_once(upstream):
    limits = Limits(max_connections=5, header_timeout_s=30)
    with Gateway(upstream.http_url, upstream.grpc_url, limits=limits) as gw:
        host, port = gw.http_url.rsplit(":", 1)
        held = [socket.create_connection((host, int(port))) for _ in range(5)]
        time.sleep(0.2)
        extra = socket.create_connection((host, int(port)))
        extra.settimeout(5)
        assert extra.recv(10) == b""  # closed by the gateway
        assert gw.http.guard.refused == 1
        for s in held:
            s.close()
        extra.close()
        time.sleep(0.2)  # the gateway sees the closes; at the cap, closed connections free their places
        assert _wire(gw, "http").classify(DEFENDED, ["a"]).ok


# -- case 11: what reaches the upstream is the canonical client id -----------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("where", ["header", "parameter"])
def test_client_ids_reach_the_upstream_in_nfkc(upstream, protocol, where):
    client = "ａｌｉｃｅ" if where == "parameter" or protocol == "http" else "alice"
    with Gateway(upstream.http_url, upstream.grpc_url) as gw, _wire(gw, protocol) as wire:
        upstream.http_seen.clear()
        upstream.grpc_seen.clear()
        if where == "header":
            sent = client.encode().decode("latin-1") if protocol == "http" else client  # raw UTF-8 bytes
            assert wire.classify(DEFENDED, ["a"], headers={CLIENT_ID_KEY: sent}).ok
            seen = upstream.http_seen[-1][2] if protocol == "http" else upstream.grpc_seen[-1][1]
            headers = {k.lower(): v for k, v in seen.items()}
            assert headers[CLIENT_ID_KEY] == "alice"
        else:
            assert wire.classify(DEFENDED, ["a"], parameters={CLIENT_ID_KEY: client}).ok
            if protocol == "http":
                _, _, headers, body = upstream.http_seen[-1]
                size = int({k.lower(): v for k, v in headers.items()}["inference-header-content-length"])
                assert json.loads(body[:size])["parameters"][CLIENT_ID_KEY] == "alice"
            else:
                body = upstream.grpc_seen[-1][0]
                assert service_pb2.ModelInferRequest.FromString(body).parameters[CLIENT_ID_KEY].string_param == "alice"
