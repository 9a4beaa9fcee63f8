"""Issue 16: the production stack under hostile traffic, over HTTP and gRPC, against the real
gateway and tritonserver. Each numbered case of the issue is a test here (named ``test_NN_...``);
the restart budget (case 2) and the caps that need a slow upstream are in
tests/serving/test_limits.py.

Every refusal must be the caller's 4xx / INVALID_ARGUMENT-like status with a message naming the
mistake, never a 5xx, never an internal address; and the stack must go on serving.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import threading
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2

from veil.model_repository.spec import DEFENDED
from veil.serving.policy import Limits
from veil.serving.production import ProductionServer
from veil.wire import CLIENT_ID_KEY

from ..conftest import tiny_repository
from .wire import Answer, Wire, caller_fault, valid_probabilities

pytestmark = pytest.mark.integration

PROTOCOLS = ("http", "grpc")
PROBE = ["a good film", "an awful plot"]
INFER = f"/v2/models/{DEFENDED}/infer"
HOSTILE_LIMITS = Limits(timeout_s=8.0, header_timeout_s=2.0, body_timeout_s=2.0, probe_timeout_s=1.5)


@pytest.fixture(scope="module")
def hostile(tiny_build, tmp_path_factory):
    """A production stack of its own with short deadlines (cases 1 and 3 freeze or flood it)."""
    root = tmp_path_factory.mktemp("hostile")
    repo = tiny_repository(tiny_build, root / "repo", mode="production", variants=("veil",))
    with ProductionServer(repo, log_file=root / "tritonserver.log", limits=HOSTILE_LIMITS, max_restarts=3) as s:
        yield s


def _wire(stack, protocol: str) -> Wire:
    return Wire(protocol, stack.http_url if protocol == "http" else stack.grpc_url)


def _json_infer(wire: Wire, doc: object, *, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Answer:
    body = raw if raw is not None else json.dumps(doc).encode()
    return wire.http("POST", INFER, body=body, headers={"Content-Type": "application/json", **(headers or {})})


def _text_doc(items=("a good film",), *, shape=None, **extra) -> dict:
    shape = list(shape) if shape is not None else [len(items), 1]
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "data": list(items)}]}
    doc.update(extra)
    return doc


def _grpc_request(items=("a good film",), *, shape=None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=DEFENDED)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=list(shape or (len(items), 1)))
    tensor.contents.bytes_contents.extend(t.encode() for t in items)
    return request


def _refused(answer: Answer, *words: str) -> None:
    """A caller's error naming the mistake, with no internal address in it."""
    assert not answer.ok and caller_fault(answer), answer
    assert all(w in answer.message for w in words), answer
    assert "127.0.0.1" not in answer.message and "ipv4:" not in answer.message, answer


def _serves(stack, protocol: str = "http") -> None:
    with _wire(stack, protocol) as wire:
        assert valid_probabilities(wire.classify(DEFENDED, PROBE), len(PROBE))


# -- 1. holding connections open ---------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset: closed too
        return True


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_01_half_sent_and_idle_connections_are_closed_and_others_served(hostile, protocol):
    host, port = (hostile.http_url if protocol == "http" else hostile.grpc_url).rsplit(":", 1)
    socks = []
    for i in range(60):
        s = socket.create_connection((host, int(port)))
        if i % 2:  # half a request (HTTP) / half a connection preface (gRPC)
            s.sendall(
                b"POST /v2/models/veil_defended/infer HTTP/1.1\r\nHost: x\r\n" if protocol == "http" else b"PRI *"
            )
        socks.append(s)
    t0 = time.monotonic()
    _serves(hostile, protocol)  # others are served meanwhile
    assert time.monotonic() - t0 < 5
    deadline = HOSTILE_LIMITS.header_timeout_s + 3.0
    assert all(_closed_within(s, deadline) for s in socks), "a held connection outlived the head/handshake timeout"
    for s in socks:
        s.close()
    _serves(hostile, protocol)


def test_01_a_slow_body_is_answered_408_within_the_body_timeout(hostile):
    host, port = hostile.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode())
        s.settimeout(HOSTILE_LIMITS.body_timeout_s + 5)
        t0 = time.monotonic()
        head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < HOSTILE_LIMITS.body_timeout_s + 3, head


# -- 4. memory amplification: no request decompression, bounded text per request ---------------


def test_04_a_compressed_http_body_is_refused_not_inflated(production_stack):
    bomb = gzip.compress(json.dumps(_text_doc(parameters={"x": "a" * (60 << 20)})).encode())
    assert len(bomb) < 100_000
    with _wire(production_stack, "http") as wire:
        answer = _json_infer(wire, None, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status == "415" and "send the request body uncompressed" in answer.message, answer


def test_04_a_compressed_grpc_bomb_is_refused(production_stack):
    request = _grpc_request()
    request.parameters["x"].string_param = "a" * (60 << 20)
    with grpc.insecure_channel(production_stack.grpc_url, compression=grpc.Compression.Gzip) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    _serves(production_stack, "grpc")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_04_large_parameters_and_batches_are_refused(production_stack, protocol):
    with _wire(production_stack, protocol) as wire:
        answer = wire.classify(DEFENDED, ["a film"], parameters={"x": "a" * 2000})
        _refused(answer, "parameter 'x'", "longer than 1024 bytes")
        # 256 texts of 20,000 bytes: under the body limit, over the text-per-request limit.
        answer = wire.classify(DEFENDED, ["a" * 20_000] * 256)
        _refused(answer, "bytes of text", "per request")
        assert answer.status in ("413", "RESOURCE_EXHAUSTED")
    _serves(production_stack, protocol)


# -- 5. CPU: parameter count is bounded ---------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_05_many_parameters_are_refused_fast(production_stack, protocol):
    params = {f"k{i}": i for i in range(100_000)}
    with _wire(production_stack, protocol) as wire:
        t0 = time.monotonic()
        if protocol == "http":
            answer = _json_infer(wire, _text_doc(parameters=params))
        else:
            answer = wire.classify(DEFENDED, ["a film"], parameters=params)
        took = time.monotonic() - t0
    _refused(answer, "100000 parameters", "the limit is 16")
    assert took < 5, took


# -- 6. the batch dimension is a 64-bit value ---------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [2**32, 2**32 + 1, 257, 2**63 - 1])
def test_06_batch_dimension_is_checked_as_64_bit(production_stack, protocol, batch):
    with _wire(production_stack, protocol) as wire:
        if protocol == "http":
            answer = _json_infer(wire, _text_doc(shape=[batch, 1]))
        else:
            answer = wire.grpc_call("ModelInfer", _grpc_request(shape=(batch, 1)))[0]
    _refused(answer, "batch-size must be <= 256")


# -- 7. duplicate keys and duplicated inputs ----------------------------------------------------


def test_07_duplicate_json_keys_are_refused(production_stack):
    inputs = json.dumps(_text_doc()["inputs"])
    with _wire(production_stack, "http") as wire:
        for raw in (
            f'{{"parameters": 5, "parameters": {{}}, "inputs": {inputs}}}',
            f'{{"inputs": {inputs}, "inputs": {inputs}}}',
        ):
            _refused(_json_infer(wire, None, raw=raw.encode()), "duplicate key")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_07_a_duplicated_input_is_refused(production_stack, protocol):
    with _wire(production_stack, protocol) as wire:
        if protocol == "http":
            doc = _text_doc()
            shm = {"name": "text", "datatype": "BYTES", "shape": [1, 1], "parameters": {"shared_memory_region": "r"}}
            doc["inputs"].insert(0, shm)
            _refused(_json_infer(wire, doc), "shared memory")
            doc["inputs"][0] = dict(doc["inputs"][1])
            answer = _json_infer(wire, doc)
        else:
            request = _grpc_request()
            request.inputs.append(request.inputs[0])
            answer = wire.grpc_call("ModelInfer", request)[0]
    _refused(answer, "input 'text' appears more than once")


# -- 8. caller mistakes are never 500 -----------------------------------------------------------


def _binary_doc(size: object) -> bytes:
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "parameters": {"binary_data_size": size}}]}
    return json.dumps(doc).encode()


HTTP_MISTAKES = {
    "binary_data_size -1": (_binary_doc(-1), "binary_data_size"),
    "binary_data_size 2^64": (_binary_doc(2**64), "64-bit"),
    "binary_data_size string": (_binary_doc("12"), "binary_data_size"),
    "classification -1": (
        json.dumps(_text_doc(outputs=[{"name": "label", "parameters": {"classification": -1}}])).encode(),
        "classification",
    ),
    "parameters 100k deep": (
        b'{"inputs": [], "parameters": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        "nested",
    ),
    "lone surrogate": (
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["\\ud800"]}]}',
        "lone surrogate",
    ),
    "1e400": (b'{"inputs": [], "parameters": {"x": 1e400}}', "out of range"),
    "NaN": (b'{"inputs": [], "parameters": {"x": NaN}}', "NaN"),
    "huge integer": (b'{"inputs": [], "parameters": {"x": ' + b"9" * 5000 + b"}}", "more than 20 digits"),
    "non-string text": (json.dumps(_text_doc([5])).encode(), "must be a JSON string"),
    "negative dimension": (json.dumps(_text_doc(shape=[1, -1])).encode(), "negative"),
    "float dimension": (json.dumps(_text_doc(shape=[1.5, 1])).encode(), "integer"),
    "unknown field": (json.dumps(_text_doc(extra=1)).encode(), "unknown field 'extra'"),
    "invalid UTF-8": (b'{"inputs": [], "id": "\xff"}', "not valid JSON"),
}


@pytest.mark.parametrize("name", list(HTTP_MISTAKES))
def test_08_http_caller_mistakes_are_4xx(production_stack, name):
    body, words = HTTP_MISTAKES[name]
    with _wire(production_stack, "http") as wire:
        _refused(_json_infer(wire, None, raw=body), words)


@pytest.mark.parametrize("length", ["1_04", "١٠٤", "+104", "104.0", "-1", "0x68"])
def test_08_inference_header_length_is_ascii_digits_only(production_stack, length):
    with _wire(production_stack, "http") as wire:
        answer = wire.http(
            "POST",
            INFER,
            body=json.dumps(_text_doc()).encode(),
            headers={"Inference-Header-Content-Length": length.encode().decode("latin-1")},
        )
    _refused(answer, "Inference-Header-Content-Length")


def _grpc_mistakes() -> dict[str, tuple[service_pb2.ModelInferRequest, str]]:
    out = {}
    r = _grpc_request(shape=(1, -1))
    out["negative dimension"] = (r, "negative")
    r = _grpc_request()
    r.outputs.add(name="label").parameters["classification"].int64_param = -1
    out["classification -1"] = (r, "classification")
    r = _grpc_request()
    r.inputs[0].datatype = "TEXT"
    out["unknown datatype"] = (r, "unknown datatype")
    r = _grpc_request()
    r.raw_input_contents.extend([b"", b""])
    out["raw contents count"] = (r, "raw input contents")
    r = _grpc_request()
    r.parameters[CLIENT_ID_KEY].int64_param = 7
    out["non-string client id"] = (r, "client id must be a string")
    return out


@pytest.mark.parametrize("name", list(_grpc_mistakes()))
def test_08_grpc_caller_mistakes_are_invalid_argument(production_stack, name):
    request, words = _grpc_mistakes()[name]
    with _wire(production_stack, "grpc") as wire:
        answer = wire.grpc_call("ModelInfer", request)[0]
    _refused(answer, words)
    assert answer.status == "INVALID_ARGUMENT"


# -- 9. responses are compressed only when the caller asked -------------------------------------


@pytest.mark.parametrize("asked", [None, "gzip"])
def test_09_responses_are_compressed_only_when_asked(production_stack, asked):
    host, port = production_stack.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # adds no Accept-Encoding of its own
    headers = {"Content-Type": "application/json"} | ({"Accept-Encoding": asked} if asked else {})
    conn.request("POST", INFER, body=json.dumps(_text_doc(PROBE)), headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    if asked:
        assert resp.getheader("Content-Encoding") == "gzip"
        body = gzip.decompress(body)
    else:
        assert resp.getheader("Content-Encoding") is None
    assert len(json.loads(body)["outputs"]) == 2


# -- 10. HTTP and gRPC agree; no internal address in any message --------------------------------


@pytest.mark.parametrize("version", ["1/../classifier", " 1", "99999999999999999999", "-1", "1e3", "１"])
def test_10_model_versions_are_digits_only_on_both_protocols(production_stack, version):
    with _wire(production_stack, "http") as http_wire, _wire(production_stack, "grpc") as grpc_wire:
        path = f"/v2/models/{DEFENDED}/versions/{version}/infer".replace(" ", "%20")
        h = http_wire.http("POST", path, body=json.dumps(_text_doc()).encode())
        request = _grpc_request()
        request.model_version = version
        g = grpc_wire.grpc_call("ModelInfer", request)[0]
        m = grpc_wire.grpc_call("ModelConfig", service_pb2.ModelConfigRequest(name=DEFENDED, version=version))[0]
    assert (h.status, g.status, m.status) == ("404", "NOT_FOUND", "NOT_FOUND"), (h, g, m)
    assert "stol" not in g.message and "not a version number" in g.message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_10_upstream_errors_carry_no_internal_address(production_stack, protocol):
    with _wire(production_stack, protocol) as wire:
        answer = wire.classify(DEFENDED, PROBE, outputs=("logits",))
    _refused(answer, "unexpected inference output 'logits'")
    assert str(production_stack.triton.http_port) not in answer.message
    assert str(production_stack.triton.grpc_port) not in answer.message


# -- 11. client ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("where", ["header", "parameter"])
@pytest.mark.parametrize(
    ("client", "words"),
    [
        ("\u200b\u200b", "no visible characters"),
        ("\u200d", "no visible characters"),
        ("peer:10.0.0.1", "assigned by the gateway"),
        ("ＰＥＥＲ:10.0.0.1", "assigned by the gateway"),  # NFKC first, then the check
    ],
)
def test_11_client_ids_that_cannot_be_claimed(production_stack, protocol, where, client, words):
    kwargs = {"headers": {CLIENT_ID_KEY: client}} if where == "header" else {"parameters": {CLIENT_ID_KEY: client}}
    if protocol == "grpc" and where == "header" and not client.isascii():
        pytest.skip("gRPC metadata values are printable ASCII: the client library refuses to send this one")
    if protocol == "http" and where == "header":
        kwargs["headers"] = {CLIENT_ID_KEY: client.encode().decode("latin-1")}  # requests sends latin-1
        words = words if client.isascii() else ""
    with _wire(production_stack, protocol) as wire:
        answer = wire.classify(DEFENDED, PROBE, **kwargs)
    _refused(answer, words)


# -- 3. a frozen tritonserver (last: it restarts the hostile stack) -----------------------------


def test_03_a_frozen_tritonserver_is_detected_answered_and_restarted(hostile):
    limits = HOSTILE_LIMITS
    _serves(hostile)
    pid = hostile.triton.process.pid
    answers: dict[str, tuple[Answer, float]] = {}

    def ask(name: str, call) -> None:
        t0 = time.monotonic()
        answers[name] = (call(), time.monotonic() - t0)

    os.kill(pid, signal.SIGSTOP)
    try:
        http_wire, grpc_wire = _wire(hostile, "http"), _wire(hostile, "grpc")
        threads = [
            threading.Thread(target=ask, args=("infer-http", lambda: http_wire.classify(DEFENDED, PROBE))),
            threading.Thread(target=ask, args=("infer-grpc", lambda: grpc_wire.classify(DEFENDED, PROBE))),
            threading.Thread(target=ask, args=("ready-http", lambda: http_wire.http("GET", "/v2/health/ready"))),
            threading.Thread(target=ask, args=("live-http", lambda: http_wire.http("GET", "/v2/health/live"))),
            threading.Thread(
                target=ask,
                args=("ready-grpc", lambda: grpc_wire.grpc_call("ServerReady", service_pb2.ServerReadyRequest())[0]),
            ),
        ]
        for t in threads:
            t.start()
        # The supervisor's loop: probes go unanswered, so it reports and restarts.
        t0 = time.monotonic()
        report = None
        while report is None and time.monotonic() - t0 < 30:
            report = hostile.recover()
        detected = time.monotonic() - t0
        for t in threads:
            t.join(limits.timeout_s + 10)
    finally:
        if hostile.triton.process.pid == pid:  # not restarted: let it go
            os.kill(pid, signal.SIGCONT)
    assert report is not None and "did not answer" in report.describe() and "hung" in report.describe(), report
    assert detected < 60, detected  # two probes, then the restart (about 10-20 s on 2 cores)
    print(f"frozen tritonserver: detected and restarted in {detected:.1f}s; answers {answers}")
    for name, (answer, took) in answers.items():
        assert took < limits.timeout_s + 3, (name, took)
        assert "127.0.0.1" not in answer.message
    ready, _ = answers["ready-http"]
    assert ready.status == "503" and ready.message, ready
    assert hostile.triton.process.pid != pid and hostile.triton.health().ok
    _serves(hostile, "http")
    _serves(hostile, "grpc")
    http_wire.close()
    grpc_wire.close()
