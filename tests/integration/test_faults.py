"""Faults under load: a python stub or the whole server killed while requests are in flight.

The launcher must say what died (and the gateway must stop calling itself ready), a restart must
serve the same answers for the same inputs, and no caller may get a partial answer: every
response is an error or a complete, valid probability vector; the defended ones keep the label
and never serve a risky row raw.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil
import pytest

from veil.model_repository.spec import DEFENDED, RAW
from veil.serving.launcher import Health
from veil.serving.production import ProductionServer

from ..conftest import tiny_repository
from .wire import Answer, Callers, Wire, valid_probabilities

pytestmark = pytest.mark.integration

PROBE = ["a good film", "an awful plot", "the cast and the story", "it was a movie"]
FIXED = "veil_fixed_intensity"


@pytest.fixture(scope="module")
def stack(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    repo = tiny_repository(tiny_build, root / "repo", mode="production", variants=("veil", "fixed_intensity"))
    with ProductionServer(repo, log_file=root / "tritonserver.log", max_restarts=5) as s:
        yield s


@pytest.fixture(scope="module")
def reference(server, stack) -> dict[str, np.ndarray]:
    """Raw and fixed-intensity answers from the (separate) benchmark server; the fault stack's
    must match them before any fault, too."""
    with Wire("http", server.http_url) as w:
        raw, fixed = w.classify(RAW, PROBE), w.classify(FIXED, PROBE)
    assert valid_probabilities(raw, len(PROBE)) and valid_probabilities(fixed, len(PROBE))
    ref = {"raw": raw["probabilities"], "fixed": fixed["probabilities"], "label": raw["label"]}
    assert (ref["fixed"] != ref["raw"]).any(1).any(), "some probe rows must be perturbed for the checks to bite"
    _assert_same_answers(stack, ref)
    return ref


def _inside(stack: ProductionServer, protocol: str) -> Wire:
    url = stack.triton.grpc_url if protocol == "grpc" else stack.triton.http_url
    return Wire(protocol, url, headers=stack.internal_headers(grpc_protocol=protocol == "grpc"))


def _assert_same_answers(stack: ProductionServer, ref: dict[str, np.ndarray]) -> None:
    with _inside(stack, "http") as inside, Wire("grpc", stack.grpc_url) as front:
        fixed, defended = inside.classify(FIXED, PROBE), front.classify(DEFENDED, PROBE)
    assert valid_probabilities(fixed, len(PROBE)) and valid_probabilities(defended, len(PROBE))
    np.testing.assert_array_equal(fixed["probabilities"], ref["fixed"])
    np.testing.assert_array_equal(defended["label"], ref["label"])


class Load(Callers):
    """Three callers in threads until stopped: the defended ensemble through the gateway over HTTP
    and gRPC, and the fixed-intensity ensemble straight from Triton (its answer is deterministic)."""

    def __init__(self, stack: ProductionServer) -> None:
        super().__init__()
        self.stack = stack
        self.results: list[tuple[float, str, Answer]] = []
        self.threads = [
            threading.Thread(target=self._run, args=(kind, make), daemon=True)
            for kind, make in (
                ("defended-http", lambda: Wire("http", stack.http_url)),
                ("defended-grpc", lambda: Wire("grpc", stack.grpc_url)),
                ("fixed-grpc", lambda: _inside(stack, "grpc")),
            )
        ]

    def _run(self, kind: str, make: Callable[[], Wire]) -> None:
        model = FIXED if kind.startswith("fixed") else DEFENDED
        with make() as wire:
            while not self.stopping.is_set():
                try:
                    answer = wire.classify(model, PROBE, timeout=10)
                except Exception as err:  # connection refused while the server is down
                    answer = Answer("connection", str(err))
                self.results.append((time.monotonic(), kind, answer))
                if not answer.ok:
                    time.sleep(0.02)  # errors come back fast; do not starve the restart of CPU

    def check(self, ref: dict[str, np.ndarray], *, fault_at: float, restarted_at: float) -> dict[str, int]:
        """Every answer complete or an error; errors seen during the outage, answers after it."""
        counts = {"ok": 0, "error": 0, "error_during_outage": 0, "ok_after_restart": 0}
        for t, kind, answer in self.results:
            if not answer.ok:
                assert not answer.outputs
                counts["error"] += 1
                counts["error_during_outage"] += fault_at <= t <= restarted_at + 1.0
                continue
            assert valid_probabilities(answer, len(PROBE)), (kind, answer)
            p = answer["probabilities"]
            np.testing.assert_array_equal(answer["label"], ref["label"])
            if kind.startswith("fixed"):
                np.testing.assert_array_equal(p, ref["fixed"])
            else:
                # Adaptive answers depend on the caller's state, and a calibrated level may sit
                # above the raw confidence; the label is kept and a risky row is never served raw.
                assert (p.argmax(1) == ref["raw"].argmax(1)).all(), "a defended answer changed the label"
                perturbed = (ref["fixed"] != ref["raw"]).any(1)
                assert (p[perturbed] != ref["raw"][perturbed]).any(1).all(), "raw output on a risky row"
            counts["ok"] += 1
            counts["ok_after_restart"] += t > restarted_at
        assert counts["error_during_outage"] > 0 and counts["ok_after_restart"] > 0, counts
        return counts


def _wait_unhealthy(stack: ProductionServer, timeout: float = 15.0) -> Health:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = stack.triton.health()
        if not report.ok:
            return report
        time.sleep(0.05)
    raise AssertionError("the launcher never noticed the fault")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gateway_ready(stack: ProductionServer) -> Answer:
    with Wire("http", stack.http_url) as w:
        return w.http("GET", "/v2/health/ready")


def test_a_killed_stub_is_reported_and_a_restart_serves_the_same_answers(stack, reference):
    model = "mia_defense"  # the defense step: the stub whose loss must never leak raw outputs
    restarts = stack.triton.restarts
    with Load(stack) as load:
        time.sleep(1.0)
        victim = stack.triton.stub_processes()[model][0]
        fault_at = time.monotonic()
        victim.kill()
        report = _wait_unhealthy(stack)
        assert report.alive and report.dead_stubs == [f"{model} (pid {victim.pid})"], report
        ready = _gateway_ready(stack)
        assert ready.status == "503" and f"{model} (pid {victim.pid})" in ready.message
        time.sleep(0.5)  # callers meet the dead stub
        t0 = time.monotonic()
        assert stack.recover() is not None
        restarted_at = time.monotonic()
        print(f"restart took {restarted_at - t0:.1f}s")
        assert stack.triton.health().ok and stack.triton.restarts == restarts + 1
        time.sleep(1.5)
    counts = load.check(reference, fault_at=fault_at, restarted_at=restarted_at)
    print(f"killed {model} stub: {counts}")
    assert _gateway_ready(stack).ok
    _assert_same_answers(stack, reference)


def test_a_killed_server_is_reported_and_a_restart_serves_the_same_answers(stack, reference):
    restarts = stack.triton.restarts
    with Load(stack) as load:
        time.sleep(1.0)
        stubs = [p for procs in stack.triton.stub_processes().values() for p in procs]
        fault_at = time.monotonic()
        os.kill(stack.triton.process.pid, signal.SIGKILL)
        report = _wait_unhealthy(stack)
        assert not report.alive and "killed by SIGKILL" in report.describe()
        ready = _gateway_ready(stack)
        assert ready.status == "503" and "killed by SIGKILL" in ready.message
        time.sleep(0.5)
        t0 = time.monotonic()
        assert stack.recover() is not None
        restarted_at = time.monotonic()
        print(f"restart took {restarted_at - t0:.1f}s")
        assert stack.triton.health().ok and stack.triton.restarts == restarts + 1
        assert not any(_alive(p) for p in stubs), "orphaned stubs left behind"
        time.sleep(1.5)
    counts = load.check(reference, fault_at=fault_at, restarted_at=restarted_at)
    print(f"killed tritonserver: {counts}")
    _assert_same_answers(stack, reference)
