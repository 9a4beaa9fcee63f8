"""Fail closed: an unusable defense artifact keeps the defended model from ever serving, and a
defense that raises at run time answers with an error, never with undefended outputs.

tests/model_repository/test_server.py covers a corrupt tensor file with the default flags; here
the production launcher meets a foreign artifact, and one server kept up with
``--exit-on-error=false`` shows each kind of unusable artifact failing its own model while the
rest of the server (the raw ensemble included) keeps serving.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import requests

from veil.model_repository.spec import DEFENDED, RAW
from veil.python_backend.artifact import META_FILE, TENSOR_FILE
from veil.serving.gateway import Gateway
from veil.serving.launcher import ServerError, TritonServer, repositories_for
from veil.serving.production import ProductionServer
from veil.wire import CLIENT_ID_KEY, METRICS_FLUSH_S

from ..conftest import tiny_repository
from .conftest import TRIGGERS
from .wire import Wire, valid_probabilities

pytestmark = pytest.mark.integration

PROTOCOLS = ("http", "grpc")
PROBE = ["a good film", "an awful plot", "the cast and the story"]
BROKEN = {
    DEFENDED: ("mia_defense", "missing", "is missing"),
    "veil_fixed_intensity": ("mia_defense_fixed_intensity", "corrupt", "is corrupt (sha256 mismatch)"),
    "veil_temperature": ("mia_defense_temperature", "foreign", "calibrated for classifier"),
}


def _break(defense_dir, how: str) -> None:
    if how == "missing":
        (defense_dir / META_FILE).unlink()
    elif how == "corrupt":
        blob = bytearray((defense_dir / TENSOR_FILE).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (defense_dir / TENSOR_FILE).write_bytes(bytes(blob))
    else:  # calibrated for another classifier
        meta = json.loads((defense_dir / META_FILE).read_text())
        meta["classifier_sha256"] = "0" * 64
        (defense_dir / META_FILE).write_text(json.dumps(meta))


def test_a_foreign_artifact_keeps_the_production_server_from_starting(tiny_build, tmp_path):
    repo = tiny_repository(tiny_build, tmp_path / "repo", mode="production", variants=("veil",))
    _break(repo / "embedded" / "mia_defense" / "1" / "defense", "foreign")
    stack = ProductionServer(repo, log_file=tmp_path / "log.txt", startup_timeout=120)
    with pytest.raises(ServerError, match="before becoming ready"):
        stack.start()
    assert not stack.triton.alive()
    assert stack.gateway._thread is None  # the gateway never opened
    log = (tmp_path / "log.txt").read_text()
    assert "mia_defense" in log and "calibrated for classifier" in log


@pytest.fixture(scope="module")
def broken_server(tiny_build, tmp_path_factory):
    """One server with three unusable artifacts, kept up so each model's state can be seen."""
    root = tmp_path_factory.mktemp("broken")
    variants = ("veil", "fixed_intensity", "temperature")
    repo = tiny_repository(tiny_build, root / "repo", mode="benchmark", variants=variants)
    for model, how, _ in BROKEN.values():
        _break(repo / "embedded" / model / "1" / "defense", how)
    server = TritonServer(
        repositories_for(repo),
        log_file=root / "log.txt",
        extra_args=["--exit-on-error=false", "--strict-readiness=false"],
    )
    with server:
        yield server


def test_each_unusable_artifact_fails_its_own_model(broken_server):
    log = broken_server.log_file.read_text()
    for ensemble, (model, _, reason) in BROKEN.items():
        assert re.search(rf"{model}.*{re.escape(reason)}", log), (model, reason)
        for target in (model, ensemble):
            url = f"http://{broken_server.http_url}/v2/models/{target}/ready"
            assert requests.get(url, timeout=5).status_code != 200, target


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_defended_endpoint_answers_without_its_artifact(broken_server, protocol):
    with Wire(protocol, broken_server.http_url if protocol == "http" else broken_server.grpc_url) as wire:
        for ensemble in BROKEN:
            answer = wire.classify(ensemble, PROBE)
            assert not answer.ok and not answer.outputs, (ensemble, answer)
            # Triton never loaded the ensemble: it is an unknown model to callers.
            assert "unknown model" in answer.message or "not ready" in answer.message, answer
        raw = wire.classify(RAW, PROBE)  # the same server still serves what is intact
    assert valid_probabilities(raw, len(PROBE))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_gateway_reports_a_defended_model_that_never_loaded(broken_server, protocol):
    with Gateway(broken_server.http_url, broken_server.grpc_url) as gw:
        if protocol == "http":
            wire = Wire("http", gw.http_url)
            ready = wire.http("GET", "/v2/health/ready")
            assert ready.status == "503" and f"model '{DEFENDED}' is not ready" in ready.message
        else:
            wire = Wire("grpc", gw.grpc_url)
            from tritonclient.grpc import service_pb2

            status, response = wire.grpc_call("ServerReady", service_pb2.ServerReadyRequest())
            assert status.ok and response.ready is False
        answer = wire.classify(DEFENDED, PROBE)
        wire.close()
    assert not answer.ok and not answer.outputs


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("via", ["gateway", "triton"])
def test_a_defense_that_raises_answers_with_an_error(fault_stack, via, protocol):
    """The test-only defense raises on the sentinel logits the test-only classifier gives the
    trigger word: the whole request is an error (also its good rows: nothing partial), the error
    is counted, and the next request is served as before."""
    grpc_ = protocol == "grpc"
    if via == "gateway":
        wire = Wire(protocol, fault_stack.grpc_url if grpc_ else fault_stack.http_url)
    else:
        url = fault_stack.triton.grpc_url if grpc_ else fault_stack.triton.http_url
        wire = Wire(protocol, url, headers=fault_stack.internal_headers(grpc_protocol=grpc_))
    inside = Wire("http", fault_stack.triton.http_url, headers=fault_stack.internal_headers())
    errors_before = _errors(fault_stack)
    with wire:
        before = inside.classify("veil_fixed_intensity", PROBE)
        for model in (DEFENDED, "veil_fixed_intensity"):
            answer = wire.classify(model, [*PROBE, f"a {TRIGGERS['raise']} film"], parameters={CLIENT_ID_KEY: "f"})
            if via == "gateway" and model != DEFENDED:
                assert answer.status in ("404", "NOT_FOUND")
                continue
            assert not answer.ok and not answer.outputs, answer
            assert answer.status == ("INTERNAL" if grpc_ else "500"), answer
            assert "defense failed; no output returned: injected fault" in answer.message
        after = inside.classify("veil_fixed_intensity", PROBE)
        defended = wire.classify(DEFENDED, PROBE)
    assert valid_probabilities(before, len(PROBE)) and valid_probabilities(defended, len(PROBE))
    np.testing.assert_array_equal(after["probabilities"], before["probabilities"])
    assert _errors(fault_stack) >= errors_before + 1


def _errors(stack) -> float:
    time.sleep(2 * METRICS_FLUSH_S)  # the defense step batches its metric updates
    text = requests.get(stack.triton.metrics_url, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("veil_request_errors_total{")
    )
