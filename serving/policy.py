"""What the gateway lets through: routes, RPCs, upstream flags and the caller's id (pure, no I/O).

Kept apart from the proxies so each rule is a function a unit test can call without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tritonclient.grpc import service_pb2_grpc

from veil.model_repository.spec import ServingOptions
from veil.python_backend.adaptive import AdaptiveConfig
from veil.wire import CLIENT_ID_KEY, canonical_client_id

GATEWAY_KEY_HEADER = "veil-gateway-key"
"""Header the internal Triton requires for inference, metadata and model-config (the gateway's key)."""
ADMIN_KEY_HEADER = "veil-admin-key"
"""Header the internal Triton requires for its admin APIs; no process is given this key by default."""
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"
INFERENCE_APIS = ("inference", "metadata", "model-config")
ADMIN_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
DEFAULT_MAX_BODY = 8 << 20
"""Request bodies (and gRPC messages, after any decompression) over this are refused with 413 /
RESOURCE_EXHAUSTED; a request carries at most ``Limits.max_text_bytes`` of text anyway."""
MAX_HEADER_BYTES = 64 << 10
ALLOWED_RPCS = ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata", "ModelConfig", "ModelInfer")
DENIED_RPCS = tuple(
    name
    for name in dir(service_pb2_grpc.GRPCInferenceServiceServicer)
    if not name.startswith("_") and name not in ALLOWED_RPCS
)
CLIENT_ID_SOURCES = ("caller", "peer")
HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
_MODEL_ROUTE = re.compile(
    r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[0-9]{1,9}))?(?P<action>/ready|/config|/infer)?"
)
_EXPOSED = {("GET", ""), ("GET", "/ready"), ("GET", "/config"), ("POST", "/infer")}


@dataclass(frozen=True)
class Limits:
    """What one request, one caller and all callers together may cost the gateway (bytes, seconds).

    The defaults keep a 2-core host answering other callers under abuse (docs/serving-hardening.md
    has the measurements); every limit a caller meets is answered as the caller's error, naming it."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    max_header_bytes: int = MAX_HEADER_BYTES
    max_client_id_bytes: int = AdaptiveConfig.max_client_id_bytes
    max_text_bytes: int = 1 << 20
    """UTF-8 bytes of text per request: 256 texts of 4 kB, far more than the tokenizer keeps (128
    tokens). The tokenizer stub's memory grows with the text it has seen at once and stays grown
    (5 batches of 4 MB of text: +181 MB that never came back; docs/serving-hardening.md)."""
    max_batch_size: int = ServingOptions.max_batch_size
    max_elements: int = 1 << 16
    max_dims: int = 8
    max_tensors: int = 8
    """Inputs (and outputs) per request."""
    max_parameters: int = 16
    """Parameters per parameter map."""
    max_parameter_bytes: int = 1024
    max_json_depth: int = 12
    timeout_s: float = 60.0
    """Deadline for a whole request (body, checks and the inference server's answer); a caller
    always has an answer (504 / DEADLINE_EXCEEDED at worst) within it."""
    header_timeout_s: float = 10.0
    """A connection must send a complete request head (HTTP) or finish its handshake (gRPC) within
    this long, and may sit idle between requests no longer than this."""
    body_timeout_s: float = 30.0
    probe_timeout_s: float = 3.0
    """Health answers (``/v2/health/*``, readiness) wait no longer than this for the inference server."""
    max_connections: int = 4096
    """Open HTTP connections; one more is closed at once (bounds file descriptors with the rlimit)."""
    max_concurrent: int = 64
    """Requests in flight, all callers together; one more is 429 / RESOURCE_EXHAUSTED."""
    max_concurrent_per_caller: int = 8
    """Requests in flight per client id (or peer address)."""


def internal_triton_args(gateway_key: str, admin_key: str) -> list[str]:
    """tritonserver flags for the Triton behind the gateway (defence in depth: even a process that
    reaches its loopback ports cannot infer without the gateway's key nor use an admin API)."""
    inference, admin = ",".join(INFERENCE_APIS), ",".join(ADMIN_APIS)
    return [
        "--model-control-mode=none",
        f"--http-restricted-api={admin}:{ADMIN_KEY_HEADER}={admin_key}",
        f"--http-restricted-api={inference}:{GATEWAY_KEY_HEADER}={gateway_key}",
        f"--grpc-restricted-protocol={admin}:{ADMIN_KEY_HEADER}={admin_key}",
        f"--grpc-restricted-protocol={inference}:{GATEWAY_KEY_HEADER}={gateway_key}",
        f"--http-header-forward-pattern={CLIENT_ID_KEY}",
        f"--grpc-header-forward-pattern={CLIENT_ID_KEY}",
    ]


@dataclass(frozen=True)
class Route:
    """An exposed HTTP route: ``upstream`` is rebuilt from the parsed path, never copied from it."""

    action: str
    """``live`` / ``ready`` (server health), or ``""``, ``/ready``, ``/config``, ``/infer`` on the model."""
    upstream: str


def http_route(method: str, raw_path: str, model: str) -> Route | None:
    """The route a request may take, or None (404). ``raw_path`` is undecoded: ``%2F`` or ``..``
    never turn into another route."""
    if method == "GET" and raw_path in HEALTH_PATHS:
        return Route(raw_path.rsplit("/", 1)[1], raw_path)
    match = _MODEL_ROUTE.fullmatch(raw_path)
    if match is None or match["model"] != model:
        return None
    action = match["action"] or ""
    if (method, action) not in _EXPOSED:
        return None
    version = f"/versions/{match['version']}" if match["version"] else ""
    return Route(action, f"/v2/models/{model}{version}{action}")


def peer_host(peer: str | None) -> str:
    """gRPC peers look like ``ipv4:127.0.0.1:5555`` or ``ipv6:[::1]:5555``; HTTP gives the host."""
    if not peer:
        return "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
    return peer


def client_id(source: str, header: str | None, in_parameters: bool, peer: str | None, *, max_bytes: int) -> str | None:
    """The ``veil-client-id`` header to send upstream (None: leave the caller's parameter).

    Raises ValueError (the caller's error) for a bad header, or for any caller-chosen id when ids
    are assigned from the peer address (``source == "peer"``). A parameter-borne id has been
    made canonical by :mod:`.validation` already."""
    if source == "peer":
        if header is not None or in_parameters:
            raise ValueError(f"client ids are assigned by this gateway; do not send '{CLIENT_ID_KEY}'")
        return f"peer:{peer_host(peer)}"
    if header is not None:
        return canonical_client_id(header, max_bytes=max_bytes)
    if in_parameters:
        return None  # the defense validates the parameter itself
    return f"peer:{peer_host(peer)}"


_ADDRESS = re.compile(
    r"(?:ipv[46]:)?(?:\[[0-9a-fA-F.]*:[0-9a-fA-F:.]*\]:\d{1,5}|(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?|localhost:\d{1,5})"
)


def scrub(message: str) -> str:
    """An upstream message without internal addresses or ports (callers learn nothing of the
    loopback Triton behind the gateway)."""
    return _ADDRESS.sub("<internal>", message)
