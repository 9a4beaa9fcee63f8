"""Bad input on the defended ensemble, over HTTP and gRPC, on two routes: straight to Triton (the
benchmark server) and through the production gateway. Each case must get a clear error naming the
problem, and the next good request must get the same answer as before.

tests/integration/test_server.py already sends some of these straight to Triton (empty batch,
wrong dtype, non-UTF-8, empty text, wrong shape); here they run through the gateway only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from veil.model_repository.spec import DEFENDED
from veil.wire import CLIENT_ID_KEY

from .conftest import TRIGGERS
from .wire import Answer, Tensor, Wire, caller_fault, numbers, texts, valid_probabilities

pytestmark = pytest.mark.integration

PROBE = ["a good film", "an awful plot", "the cast and the story"]
FIXED = "veil_fixed_intensity"
ROUTES = ("triton", "gateway")
PROTOCOLS = ("http", "grpc")
INVALID = {"http": "400", "grpc": "INVALID_ARGUMENT"}


@dataclass(frozen=True)
class Case:
    name: str
    message: str
    """Part of the error message that names the problem."""
    inputs: Callable[[], list[Tensor]] = lambda: [texts(["a good film"])]
    model: str = DEFENDED
    parameters: object = None
    headers: dict[str, str] = field(default_factory=dict)
    raw_http: tuple[bytes, dict[str, str]] | None = None
    """(body, headers) sent as is to the infer URL (HTTP only)."""
    covered_direct: bool = False
    """test_server.py sends it straight to Triton already."""
    only: tuple[str, ...] = PROTOCOLS
    answers: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    """(route, protocol) -> the acceptable (status, message) where they differ from INVALID + ``message``."""
    skip: dict[tuple[str, str], str] = field(default_factory=dict)


def _not_found(name: str) -> dict[tuple[str, str], list[tuple[str, str]]]:
    return {(route, "http"): [("404", name)] for route in ROUTES} | {
        (route, "grpc"): [("NOT_FOUND", name)] for route in ROUTES
    }


CASES = [
    Case("empty string", "empty or whitespace only", lambda: [texts([""])], covered_direct=True),
    Case("whitespace only", "empty or whitespace only", lambda: [texts([" \t\n "])]),
    Case("control characters only", "no visible characters", lambda: [texts(["\x00\x07\x1b"])]),
    Case("1 MB text", "1000000 bytes; the limit is 200000", lambda: [texts(["a" * 1_000_000])]),
    Case("non-UTF-8 bytes", "not valid UTF-8", lambda: [texts([b"\xff\xfebad"])], covered_direct=True),
    Case(
        "wrong dtype",
        "data-type is 'INT32', but model 'veil_defended' expects 'BYTES'",
        lambda: [numbers(np.ones((1, 1), np.int32), "INT32", "text")],
        covered_direct=True,
    ),
    Case("wrong shape", "unexpected shape", lambda: [texts(["a", "b"], shape=(1, 2))], covered_direct=True),
    Case("no batch dimension", "unexpected shape for input 'text'", lambda: [texts(["a film"], shape=(1,))]),
    Case("empty batch", "got 0", lambda: [texts([], shape=(0, 1))], covered_direct=True),
    Case("fewer elements than the shape", "expected 2 string elements", lambda: [texts(["a"], shape=(2, 1))]),
    Case("batch over max_batch_size", "batch-size must be <= 256", lambda: [texts(["a film"] * 257)]),
    Case("missing input", "missing required input(s) ['text']", lambda: []),
    Case("extra unknown input", "'bogus'", lambda: [texts(["a film"]), texts(["x"], name="bogus")]),
    Case("unknown model", "no_such_model", model="no_such_model", answers=_not_found("no_such_model")),
    Case("client id of 10 kB (parameter)", "longer than 256 bytes", parameters={CLIENT_ID_KEY: "x" * 10_000}),
    Case(
        "client id of 10 kB (header)",
        "longer than 256 bytes",
        headers={CLIENT_ID_KEY: "x" * 10_000},
        skip={("triton", "http"): "Triton's HTTP server drops the connection on a 10 kB header (see docs)"},
        # Triton's gRPC server rejects metadata over its 8 kB soft limit at random, else the defense does.
        answers={
            ("triton", "grpc"): [
                ("RESOURCE_EXHAUSTED", "metadata size exceeds"),
                ("INVALID_ARGUMENT", "longer than 256 bytes"),
            ]
        },
    ),
    Case("client id of the wrong type", "client id must be a string, got int", parameters={CLIENT_ID_KEY: 5}),
    Case(
        "parameters not an object",
        "must be a JSON object",
        parameters="not-an-object",
        only=("http",),
        answers={("triton", "http"): [("500", "attempt to get members for non-object")]},
    ),
    Case(
        "malformed JSON",
        "not valid JSON",
        raw_http=(b'{"inputs": [', {}),
        only=("http",),
        answers={("triton", "http"): [("500", "failed to parse the request JSON")]},
    ),
    Case(
        "JSON header length beyond the body",
        "Inference-Header-Content-Length",
        raw_http=(b'{"inputs": []}', {"Inference-Header-Content-Length": "9999"}),
        only=("http",),
        answers={("triton", "http"): [("400", "inference header size should be in range")]},
    ),
]


def _params():
    for case in CASES:
        for route in ROUTES:
            for protocol in case.only:
                if route == "triton" and case.covered_direct:
                    continue
                marks = [pytest.mark.skip(reason=case.skip[route, protocol])] if (route, protocol) in case.skip else []
                yield pytest.param(case, route, protocol, id=f"{route}-{protocol}-{case.name}", marks=marks)


class Route:
    """A way in (straight to Triton, or through the gateway) plus the check that the server still
    gives the same answers: ``veil_fixed_intensity`` straight from Triton (the gateway does not
    expose it; the adaptive ensemble's answer depends on client state, its labels do not)."""

    def __init__(self, protocol: str, front: str, inside: str, inside_headers: dict[str, str]) -> None:
        self.wire = Wire(protocol, front)
        self.inside = Wire(protocol, inside, headers=inside_headers)

    def send(self, case: Case) -> Answer:
        if case.raw_http is not None:
            body, headers = case.raw_http
            return self.wire.http("POST", f"/v2/models/{case.model}/infer", body=body, headers=headers)
        return self.wire.infer(case.model, case.inputs(), parameters=case.parameters, headers=case.headers)

    def answers(self) -> tuple[Answer, Answer]:
        return self.inside.classify(FIXED, PROBE), self.wire.classify(DEFENDED, PROBE)


@pytest.fixture(scope="module")
def routes(server, production_stack):
    built = {}
    for protocol in PROTOCOLS:
        direct = server.http_url if protocol == "http" else server.grpc_url
        built["triton", protocol] = Route(protocol, direct, direct, {})
        built["gateway", protocol] = Route(
            protocol,
            production_stack.http_url if protocol == "http" else production_stack.grpc_url,
            production_stack.triton.http_url if protocol == "http" else production_stack.triton.grpc_url,
            production_stack.internal_headers(grpc_protocol=protocol == "grpc"),
        )
    yield built
    for route in built.values():
        route.wire.close()
        route.inside.close()


@pytest.fixture(scope="module")
def reference(routes) -> Answer:
    fixed, _ = routes["triton", "http"].answers()
    assert valid_probabilities(fixed, len(PROBE))
    return fixed


def assert_same_answers(route: Route, reference: Answer) -> None:
    fixed, defended = route.answers()
    assert valid_probabilities(fixed, len(PROBE)) and valid_probabilities(defended, len(PROBE))
    np.testing.assert_array_equal(fixed["probabilities"], reference["probabilities"])
    np.testing.assert_array_equal(defended["label"], reference["label"])


@pytest.mark.parametrize(("case", "route", "protocol"), list(_params()))
def test_bad_input_gets_a_clear_error_and_serving_goes_on(case, route, protocol, routes, reference):
    r = routes[route, protocol]
    assert_same_answers(r, reference)
    answer = r.send(case)
    expected = case.answers.get((route, protocol), [(INVALID[protocol], case.message)])
    assert not answer.ok and not answer.outputs
    assert any(answer.status == status and message in answer.message for status, message in expected), answer
    if route == "gateway":
        assert caller_fault(answer), "the production route answers the caller's mistakes as the caller's"
    assert_same_answers(r, reference)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_control_characters_inside_a_text_are_normalised_away(routes, protocol):
    """Not an error: the tokenizer drops them, so the answer is the one for the clean text."""
    wire = routes["triton", protocol].wire
    clean = wire.classify(FIXED, ["a good film", "an awful plot"])
    dirty = wire.classify(FIXED, ["a good\x07 film\x1b", "an\x00 awful plot\x0b"])
    assert valid_probabilities(clean, 2)
    np.testing.assert_array_equal(dirty["probabilities"], clean["probabilities"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("via", ["gateway", "triton"])
def test_non_finite_logits_reaching_the_defense_are_refused(fault_stack, kind, via, protocol):
    """The test-only classifier returns NaN / Inf logits for a trigger word; the real defense step
    answers INVALID_ARGUMENT naming the rows, and then serves the next request as before."""
    if via == "gateway":
        wire = Wire(protocol, fault_stack.http_url if protocol == "http" else fault_stack.grpc_url)
    else:
        url = fault_stack.triton.http_url if protocol == "http" else fault_stack.triton.grpc_url
        wire = Wire(protocol, url, headers=fault_stack.internal_headers(grpc_protocol=protocol == "grpc"))
    with wire:
        before = wire.classify(DEFENDED, PROBE, parameters={CLIENT_ID_KEY: "calm"})
        answer = wire.classify(DEFENDED, ["a good film", f"a {TRIGGERS[kind]} film"])
        assert not answer.ok and not answer.outputs
        assert answer.status == INVALID[protocol], answer
        assert "non-finite logits (NaN or Inf) in row(s) [1]" in answer.message
        after = wire.classify(DEFENDED, PROBE, parameters={CLIENT_ID_KEY: "calm"})
    assert valid_probabilities(before, len(PROBE)) and valid_probabilities(after, len(PROBE))
    np.testing.assert_array_equal(after["label"], before["label"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_finite_logits_sent_to_the_defense_step_directly(server, protocol):
    """Benchmark mode exposes mia_defense; NaN and Inf logits are the caller's error there."""
    with Wire(protocol, server.http_url if protocol == "http" else server.grpc_url) as wire:
        for bad in ([np.nan, 0.0], [np.inf, -np.inf]):
            logits = np.array([[1.0, -1.0], bad], np.float32)
            answer = wire.infer("mia_defense", [numbers(logits, "FP32", "logits")])
            assert answer.status == INVALID[protocol] and "row(s) [1]" in answer.message, answer
        good = wire.infer("mia_defense", [numbers(np.array([[1.0, -1.0]], np.float32), "FP32", "logits")])
    assert valid_probabilities(good, 1)
