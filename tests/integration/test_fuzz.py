"""Property-based abuse of the real gateway + tritonserver (issue 16): KServe v2 JSON bodies and
headers over HTTP, ModelInferRequest messages and metadata over gRPC, mostly almost-valid.

Properties: no 5xx / server-side gRPC status for anything a caller sends, an answer within the
gateway's deadline, and the stack still serving afterwards. CI runs ``VEIL_FUZZ_EXAMPLES``
examples per protocol (default 60, about a minute on 2 cores); docs/serving-hardening.md has the
longer run.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from veil.model_repository.spec import DEFENDED
from veil.serving.validation import DATATYPES
from veil.wire import CLIENT_ID_KEY

from .wire import Answer, Wire, valid_probabilities

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("VEIL_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DEADLINE_S = 60.0 + 10.0  # Limits.timeout_s plus slack for a loaded 2-core host
SERVER_FAULTS = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"}

edge_ints = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([2**31, 2**32, 2**32 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), -1]),
)
texts = st.text(max_size=40)
header_values = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40).map(str.strip)
"""What an HTTP client library will send at all (no CR/LF, no leading whitespace)."""
json_leaf = st.one_of(st.none(), st.booleans(), edge_ints, st.floats(allow_nan=False), texts)
json_any = st.recursive(
    json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=4), max_leaves=20
)
names = st.one_of(st.sampled_from(["text", "probabilities", "label", "logits", ""]), texts)
datatypes = st.one_of(st.sampled_from(sorted(DATATYPES)), texts)
params = st.dictionaries(
    st.one_of(st.sampled_from([CLIENT_ID_KEY, "binary_data_size", "classification", "binary_data"]), texts),
    json_any,
    max_size=4,
)


@st.composite
def json_input(draw) -> dict:
    entry: dict = {
        "name": draw(st.one_of(st.just("text"), names)),
        "datatype": draw(st.one_of(st.just("BYTES"), datatypes)),
        "shape": draw(st.one_of(st.lists(edge_ints, min_size=1, max_size=3), json_any)),
    }
    if draw(st.booleans()):
        entry["data"] = draw(st.one_of(st.lists(texts, max_size=4), json_any))
    if draw(st.booleans()):
        entry["parameters"] = draw(params)
    return entry


def often(draw, percent: int) -> bool:
    """True ``percent`` % of the time: most requests stay almost valid, so they reach Triton."""
    return draw(st.integers(0, 99)) < percent


@st.composite
def near_valid_input(draw) -> dict:
    """A well-formed text input (so the request reaches Triton and every ensemble step)."""
    items = draw(st.lists(st.text(max_size=60), min_size=1, max_size=5))
    return {"name": "text", "datatype": "BYTES", "shape": [len(items), 1], "data": items}


outputs = st.one_of(
    st.lists(st.fixed_dictionaries({"name": names}, optional={"parameters": params}), max_size=3),
    st.just([{"name": "probabilities"}, {"name": "label"}]),
    edge_ints.map(lambda k: [{"name": "label", "parameters": {"classification": k}}]),
)


@st.composite
def http_request(draw) -> tuple[bytes, dict[str, str]]:
    doc: dict = {"inputs": [draw(near_valid_input())]}
    if often(draw, 30):
        doc["inputs"] = draw(st.lists(json_input(), max_size=3))
    if often(draw, 30):
        doc["outputs"] = draw(outputs)
    if often(draw, 50):
        doc["parameters"] = draw(params)
    if often(draw, 10):
        doc[draw(texts)] = draw(json_any)
    body = json.dumps(doc).encode()
    tail = draw(st.binary(max_size=64)) if often(draw, 10) else b""
    headers = {"Content-Type": "application/json"}
    if tail or often(draw, 10):
        length = draw(st.one_of(st.just(str(len(body))), header_values, st.integers(-5, 10**6).map(str)))
        headers["Inference-Header-Content-Length"] = length
    if often(draw, 50):
        headers[CLIENT_ID_KEY] = draw(header_values)
    if often(draw, 5):
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "identity"]))
    latin = {k: v.encode("utf-8", "surrogatepass").decode("latin-1") for k, v in headers.items()}
    return body + tail, latin


@st.composite
def grpc_request(draw) -> tuple[service_pb2.ModelInferRequest, list[tuple[str, str]]]:
    request = service_pb2.ModelInferRequest(
        model_name=DEFENDED if often(draw, 90) else draw(names),
        model_version="" if often(draw, 80) else draw(st.sampled_from(["1", "01", "1/../x", " 1", "9" * 20]) | texts),
        id=draw(texts) if often(draw, 20) else "",
    )
    if often(draw, 80):  # a well-formed text input (reaches Triton)
        items = draw(st.lists(st.text(max_size=60), min_size=1, max_size=5))
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(items), 1])
        tensor.contents.bytes_contents.extend(t.encode("utf-8", "surrogatepass") for t in items)
    for _ in range(draw(st.integers(0, 3)) if often(draw, 30) else 0):
        tensor = request.inputs.add(
            name=draw(st.one_of(st.just("text"), names)),
            datatype=draw(st.one_of(st.just("BYTES"), datatypes)),
            shape=draw(st.lists(st.integers(-(2**63), 2**63 - 1) | edge_ints.filter(lambda d: d < 2**63), max_size=3)),
        )
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=30), max_size=4)))
    if often(draw, 10):
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=40), max_size=3)))
    for _ in range(draw(st.integers(0, 2)) if often(draw, 30) else 0):
        output = request.outputs.add(name=draw(st.sampled_from(["probabilities", "label"]) | names))
        if often(draw, 50):
            output.parameters["classification"].int64_param = draw(edge_ints.filter(lambda k: abs(k) < 2**63))
    for key, value in (draw(params) if often(draw, 50) else {}).items():
        param = request.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int) and -(2**63) <= value < 2**63:
            param.int64_param = value
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            param.string_param = text.encode("utf-8", "replace").decode("utf-8")
    metadata = []
    if often(draw, 50):
        metadata.append((CLIENT_ID_KEY, draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))))
    return request, metadata


def _assert_caller_answer(answer: Answer, took: float, sent: object) -> None:
    event(f"status {answer.status}")  # --hypothesis-show-statistics: how many reached Triton
    assert took < DEADLINE_S, (took, sent)
    if answer.status.isdigit():
        assert int(answer.status) < 500, (answer, sent)
    else:
        assert answer.status not in SERVER_FAULTS, (answer, sent)
    assert "127.0.0.1:" not in answer.message and "ipv4:" not in answer.message, (answer, sent)


@pytest.fixture(scope="module")
def wires(production_stack):
    http, grpc_ = Wire("http", production_stack.http_url), Wire("grpc", production_stack.grpc_url)
    yield http, grpc_
    grpc_.close()
    assert valid_probabilities(http.classify(DEFENDED, ["a good film"]), 1)
    with Wire("grpc", production_stack.grpc_url) as fresh:
        assert valid_probabilities(fresh.classify(DEFENDED, ["a good film"]), 1)


@FUZZ
@given(case=http_request())
def test_fuzz_http(wires, case):
    body, headers = case
    t0 = time.monotonic()
    answer = wires[0].http("POST", f"/v2/models/{DEFENDED}/infer", body=body, headers=headers)
    _assert_caller_answer(answer, time.monotonic() - t0, (body[:300], headers))


@FUZZ
@given(case=grpc_request())
def test_fuzz_grpc(wires, case):
    request, metadata = case
    t0 = time.monotonic()
    try:
        wires[1].stub.ModelInfer(request, metadata=metadata, timeout=DEADLINE_S)
        answer = Answer("OK")
    except Exception as err:  # grpc.RpcError
        answer = Answer(err.code().name, err.details() or "")
    _assert_caller_answer(answer, time.monotonic() - t0, (str(request)[:300], metadata))
