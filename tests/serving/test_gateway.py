"""The production gateway: one route to veil_defended, nothing else, over HTTP and gRPC.

The first half runs the gateway against a fake upstream that records what reaches it (client ids,
keys, paths); the second half makes bypass attempts through the real production stack.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import requests
from tritonclient.grpc import service_pb2

from veil.model_repository.spec import DEFENDED
from veil.serving.gateway import Gateway
from veil.serving.launcher import ServerError, free_port
from veil.serving.policy import ADMIN_KEY_HEADER, DENIED_RPCS, GATEWAY_KEY_HEADER, Limits
from veil.serving.production import ProductionServer

from ..integration.wire import Wire, texts, valid_probabilities
from .upstream import FakeUpstream

PROTOCOLS = ("http", "grpc")
PROBE = ["a good film", "an awful plot"]
HIDDEN_MODELS = [
    "classifier",
    "tokenizer",
    "mia_defense",
    "mia_defense_fixed_intensity",
    "veil_fixed_intensity",
    "veil_raw",
    "softmax",
    "no_such_model",
]


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.fixture
def gateway(upstream):
    upstream.http_seen.clear()
    upstream.grpc_seen.clear()
    with Gateway(upstream.http_url, upstream.grpc_url, upstream_key="the-key") as gw:
        yield gw


def _wire(gw, protocol: str) -> Wire:
    return Wire(protocol, gw.http_url if protocol == "http" else gw.grpc_url)


def _forwarded_headers(upstream, protocol: str) -> dict[str, str]:
    if protocol == "http":
        return {k.lower(): v for k, v in upstream.http_seen[-1][2].items()}
    return upstream.grpc_seen[-1][1]


def _key_header(protocol: str) -> str:
    return GATEWAY_KEY_HEADER if protocol == "http" else "triton-grpc-protocol-" + GATEWAY_KEY_HEADER


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_gateway_names_the_caller_and_adds_only_its_own_key(gateway, upstream, protocol):
    with _wire(gateway, protocol) as wire:
        # A caller's guesses at the keys never travel upstream; the gateway's own key does.
        guesses = {GATEWAY_KEY_HEADER: "guess", ADMIN_KEY_HEADER: "guess", "triton-grpc-protocol-veil-admin-key": "x"}
        wire.classify(DEFENDED, ["a"], headers=guesses)
        seen = _forwarded_headers(upstream, protocol)
        assert seen[_key_header(protocol)] == "the-key"
        assert not any("admin" in k for k in seen) and "guess" not in seen.values()
        assert seen["veil-client-id"] == "peer:127.0.0.1"  # no id: the peer address
        wire.classify(DEFENDED, ["a"], headers={"veil-client-id": "alice"})
        assert _forwarded_headers(upstream, protocol)["veil-client-id"] == "alice"
        wire.classify(DEFENDED, ["a"], parameters={"veil-client-id": "bob"})
        assert "veil-client-id" not in _forwarded_headers(upstream, protocol)  # the parameter stands
        answer = wire.classify(DEFENDED, ["a"], headers={"veil-client-id": "x" * 300})
        assert not answer.ok and "longer than 256 bytes" in answer.message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_peer_mode_refuses_caller_chosen_ids(upstream, protocol):
    with Gateway(upstream.http_url, upstream.grpc_url, client_id_source="peer") as gw, _wire(gw, protocol) as wire:
        for kwargs in ({"headers": {"veil-client-id": "alice"}}, {"parameters": {"veil-client-id": "alice"}}):
            answer = wire.classify(DEFENDED, ["a"], **kwargs)
            assert answer.status in ("400", "INVALID_ARGUMENT") and "assigned by this gateway" in answer.message
        assert wire.classify(DEFENDED, ["a"]).ok
        assert _forwarded_headers(upstream, protocol)["veil-client-id"] == "peer:127.0.0.1"


def test_paths_are_rebuilt_never_forwarded(gateway, upstream):
    wire = _wire(gateway, "http")
    tricks = [
        "/v2/models/veil_defended/../classifier/infer",
        "/v2/models/veil_defended%2F..%2Fclassifier/infer",
        "/v2/models/veil_defended/versions/1/../../classifier/infer",
        "/v2/models/veil_defended/infer/../../classifier/infer",
        "//v2/models/classifier/infer",
        "/v2/models/veil_defended/versions/x/infer",
    ]
    for path in tricks:
        answer = wire.http("POST", path, body=b'{"inputs": []}')
        assert answer.status == "404" and "not found" in answer.message, (path, answer)
    assert upstream.http_seen == []
    assert wire.http("GET", "/v2/models/veil_defended/versions/1/config?model=classifier").ok
    assert upstream.http_seen[-1][:2] == ("GET", "/v2/models/veil_defended/versions/1/config")  # no query


def test_oversized_body_is_refused_before_it_reaches_triton(upstream):
    upstream.http_seen.clear()
    upstream.grpc_seen.clear()
    with Gateway(upstream.http_url, upstream.grpc_url, limits=Limits(max_body_bytes=10_000)) as gw:
        for protocol, status in (("http", "413"), ("grpc", "RESOURCE_EXHAUSTED")):
            with _wire(gw, protocol) as wire:
                answer = wire.classify(DEFENDED, ["a" * 20_000])
            assert answer.status == status, answer
    assert upstream.http_seen == [] and upstream.grpc_seen == []


def test_malformed_grpc_message_is_the_callers_error(gateway):
    channel = grpc.insecure_channel(gateway.grpc_url)
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff not a protobuf")
    channel.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInfer request" in err.value.details()


def test_readiness_reports_what_the_launcher_sees(upstream):
    problem = {"now": None}
    with Gateway(upstream.http_url, upstream.grpc_url, health=lambda: problem["now"]) as gw:
        http, grpc_wire = _wire(gw, "http"), _wire(gw, "grpc")
        assert http.http("GET", "/v2/health/ready").ok
        problem["now"] = "python-backend stub process died: mia_defense (pid 4242)"
        answer = http.http("GET", "/v2/health/ready")
        assert answer.status == "503" and "mia_defense (pid 4242)" in answer.message
        status, response = grpc_wire.grpc_call("ServerReady", service_pb2.ServerReadyRequest())
        assert status.ok and response.ready is False
        grpc_wire.close()


def test_an_unreachable_triton_is_a_clear_gateway_error():
    dead = f"127.0.0.1:{free_port()}"
    with Gateway(dead, dead, limits=Limits(timeout_s=5)) as gw:
        http, grpc_wire = _wire(gw, "http"), _wire(gw, "grpc")
        answer = http.classify(DEFENDED, ["a"])
        assert answer.status == "502" and "unavailable" in answer.message
        assert http.http("GET", "/v2/health/ready").status == "503"
        answer = grpc_wire.classify(DEFENDED, ["a"])
        assert answer.status == "UNAVAILABLE" and "unavailable" in answer.message
        grpc_wire.close()


def test_a_benchmark_repository_is_refused(tmp_path):
    (tmp_path / "options.json").write_text(json.dumps({"mode": "benchmark"}))
    stack = ProductionServer(tmp_path)
    with pytest.raises(ServerError, match="benchmark mode"):
        stack.start()
    assert stack.triton.process is None
    (tmp_path / "options.json").unlink()
    with pytest.raises(ServerError, match=r"options\.json is missing"):
        ProductionServer(tmp_path).start()


# -- bypass attempts through the real production stack -----------------------------------------

ADMIN_HTTP = [
    ("GET", "/v2"),
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/classifier/load"),
    ("POST", "/v2/repository/models/veil_defended/unload"),
    ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/unregister"),
    ("POST", "/v2/cudasharedmemory/region/r/register"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/veil_defended/stats"),
    ("GET", "/v2/trace/setting"),
    ("POST", "/v2/trace/setting"),
    ("POST", "/v2/models/veil_defended/trace/setting"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/logging"),
    ("POST", "/v2/models/veil_defended/generate"),
    ("POST", "/v2/models/veil_defended/generate_stream"),
    ("DELETE", "/v2/models/veil_defended"),
    ("GET", "/metrics"),
]


@pytest.mark.integration
def test_http_bypass_attempts_are_refused(production_stack):
    wire = Wire("http", production_stack.http_url)
    answers = {}
    for model in HIDDEN_MODELS:
        for method, suffix in (("POST", "/infer"), ("GET", ""), ("GET", "/config"), ("GET", "/ready")):
            path = f"/v2/models/{model}{suffix}"
            answer = wire.classify(model, PROBE) if suffix == "/infer" else wire.http(method, path)
            assert answer.status == "404" and not answer.outputs, (path, answer)
            # A hidden model and a missing one get the same answer: nothing to learn from it.
            answers[suffix, answer.message.replace(model, "<name>")] = True
    assert len(answers) == 4
    for method, path in ADMIN_HTTP:
        answer = wire.http(method, path, body=b"{}")
        assert answer.status == "404" and "not found" in answer.message, (method, path, answer)
    # The defended ensemble has no other outputs to ask for, and shared memory is refused.
    answer = wire.classify(DEFENDED, PROBE, outputs=("logits",))
    assert answer.status == "400" and "unexpected inference output 'logits'" in answer.message
    shm = wire.http(
        "POST",
        f"/v2/models/{DEFENDED}/infer",
        body=b'{"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES",'
        b' "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64}}]}',
    )
    assert shm.status == "400" and "shared memory is not available" in shm.message
    assert valid_probabilities(wire.classify(DEFENDED, PROBE), len(PROBE))


def _empty_request(rpc: str):
    return getattr(service_pb2, f"{rpc}Request")()


@pytest.mark.integration
def test_grpc_bypass_attempts_are_refused(production_stack):
    wire = Wire("grpc", production_stack.grpc_url)
    for model in HIDDEN_MODELS:
        assert wire.classify(model, PROBE).status == "NOT_FOUND"
        for rpc in ("ModelMetadata", "ModelConfig", "ModelReady"):
            status, response = wire.grpc_call(rpc, getattr(service_pb2, f"{rpc}Request")(name=model))
            assert status.status == "NOT_FOUND" and response is None, (rpc, model, status)
    for rpc in DENIED_RPCS:
        if rpc == "ModelStreamInfer":
            stream = wire.stub.ModelStreamInfer(iter([service_pb2.ModelInferRequest(model_name="classifier")]))
            with pytest.raises(grpc.RpcError) as err:
                list(stream)
            code, details = err.value.code().name, err.value.details()
        else:
            status, _ = wire.grpc_call(rpc, _empty_request(rpc))
            code, details = status.status, status.message
        assert code == "PERMISSION_DENIED" and rpc in details, (rpc, code, details)
    assert {"RepositoryIndex", "RepositoryModelLoad", "SystemSharedMemoryRegister", "ModelStatistics"} <= set(
        DENIED_RPCS
    )
    answer = wire.classify(DEFENDED, PROBE, outputs=("logits",))
    assert answer.status == "INVALID_ARGUMENT" and "unexpected inference output 'logits'" in answer.message
    request = service_pb2.ModelInferRequest(model_name=DEFENDED)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    tensor.parameters["shared_memory_region"].string_param = "r"
    status, _ = wire.grpc_call("ModelInfer", request)
    assert status.status == "INVALID_ARGUMENT" and "shared memory is not available" in status.message
    assert valid_probabilities(wire.classify(DEFENDED, PROBE), len(PROBE))
    wire.close()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_defended_ensemble_exposes_only_defended_outputs(production_stack, protocol):
    if protocol == "http":
        meta = requests.get(f"http://{production_stack.http_url}/v2/models/{DEFENDED}", timeout=10).json()
        outputs = [o["name"] for o in meta["outputs"]]
    else:
        with Wire("grpc", production_stack.grpc_url) as wire:
            status, meta = wire.grpc_call("ModelMetadata", service_pb2.ModelMetadataRequest(name=DEFENDED))
        assert status.ok
        outputs = [o.name for o in meta.outputs]
    assert sorted(outputs) == ["label", "probabilities"]


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_internal_triton_is_locked_too(production_stack, protocol):
    """Defence in depth: a process that reaches Triton's loopback ports without the gateway's key
    can neither infer nor read metadata; with it, admin APIs still need the admin key, the
    repository has no raw ensemble, and no model can be loaded or unloaded (model control none)."""
    triton = production_stack.triton
    grpc_ = protocol == "grpc"
    bare = Wire(protocol, triton.grpc_url if grpc_ else triton.http_url)
    keyed = Wire(protocol, bare.url, headers=production_stack.internal_headers(grpc_protocol=grpc_))
    admin = Wire(protocol, bare.url, headers=production_stack.internal_headers(admin=True, grpc_protocol=grpc_))
    refused = "UNAVAILABLE" if grpc_ else "403"
    for model in ("classifier", DEFENDED):
        answer = bare.infer(model, [texts(["a"])] if model == DEFENDED else [], outputs=())
        assert answer.status == refused and "restricted" in answer.message, answer
    assert keyed.classify("veil_raw", PROBE).status == ("NOT_FOUND" if grpc_ else "404")
    if grpc_:
        status, _ = keyed.grpc_call("RepositoryIndex", service_pb2.RepositoryIndexRequest())
        assert status.status == refused and ADMIN_KEY_HEADER in status.message
        status, _ = admin.grpc_call(
            "RepositoryModelUnload", service_pb2.RepositoryModelUnloadRequest(model_name=DEFENDED)
        )
        assert not status.ok and "explicit model load / unload is not allowed" in status.message
    else:
        answer = keyed.http("POST", "/v2/repository/index")
        assert answer.status == refused and ADMIN_KEY_HEADER in answer.message
        answer = admin.http("POST", f"/v2/repository/models/{DEFENDED}/unload")
        assert not answer.ok and "explicit model load / unload is not allowed" in answer.message
    assert valid_probabilities(keyed.classify(DEFENDED, PROBE), len(PROBE))
    for wire in (bare, keyed, admin):
        wire.close()
    assert "--model-control-mode=none" in triton.command()


def test_denied_rpcs_cover_every_admin_rpc():
    assert set(DENIED_RPCS).isdisjoint(
        {"ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig", "ModelInfer"}
    )
    assert len(DENIED_RPCS) == 14


def test_probabilities_helper_rejects_partial_answers():
    """The checker the fault tests rely on must catch a partial answer."""
    from ..integration.wire import Answer

    good = Answer("OK", "", {"probabilities": np.array([[0.2, 0.8]], np.float32), "label": np.array([[1]])})
    assert valid_probabilities(good, 1)
    for bad in (
        Answer("OK", "", {"probabilities": np.array([[0.2, 0.8]], np.float32)}),
        Answer("OK", "", {"probabilities": np.array([[0.2, 0.7]], np.float32), "label": np.array([[1]])}),
        Answer("OK", "", {"probabilities": np.array([[np.nan, 0.8]], np.float32), "label": np.array([[1]])}),
        Answer("OK", "", {"probabilities": np.array([[0.2, 0.8]], np.float32), "label": np.array([[0]])}),
    ):
        assert not valid_probabilities(bad, 1)
