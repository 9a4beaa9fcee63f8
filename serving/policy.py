"""What the gateway lets through: routes, RPCs, upstream flags and the caller's id (pure, no I/O).

Kept apart from the proxies so each rule is a function a unit test can call without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tritonclient.grpc import service_pb2_grpc

from veil.python_backend.adaptive import AdaptiveConfig, normalise_client_id
from veil.wire import CLIENT_ID_KEY

GATEWAY_KEY_HEADER = "veil-gateway-key"
"""Header the internal Triton requires for inference, metadata and model-config (the gateway's key)."""
ADMIN_KEY_HEADER = "veil-admin-key"
"""Header the internal Triton requires for its admin APIs; no process is given this key by default."""
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"
INFERENCE_APIS = ("inference", "metadata", "model-config")
ADMIN_APIS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
DEFAULT_MAX_BODY = 64 << 20
"""256 texts of 200,000 bytes fit; larger bodies are refused with 413 / RESOURCE_EXHAUSTED."""
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
    """What one request may cost the gateway (sizes in bytes, times in seconds)."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    max_header_bytes: int = MAX_HEADER_BYTES
    max_client_id_bytes: int = AdaptiveConfig.max_client_id_bytes
    timeout_s: float = 120.0
    """Longest wait for the inference server on one request."""


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


def check_infer_header(doc: object) -> str | None:
    """Why a KServe v2 JSON inference header is unacceptable, or None. Triton answers malformed
    parameters with a 500; the gateway answers them as the caller's error, and refuses
    shared-memory references (no caller can register a region through it anyway)."""
    if not isinstance(doc, dict):
        return "the inference request must be a JSON object"
    if not isinstance(doc.get("parameters", {}), dict):
        return "'parameters' must be a JSON object"
    for key in ("inputs", "outputs"):
        items = doc.get(key, [])
        if not isinstance(items, list):
            return f"'{key}' must be a JSON array"
        for item in items:
            if not isinstance(item, dict):
                return f"every entry of '{key}' must be a JSON object"
            params = item.get("parameters", {})
            if not isinstance(params, dict):
                return f"'parameters' of an entry of '{key}' must be a JSON object"
            if any(str(k).startswith("shared_memory") for k in params):
                return "shared memory is not available through the Veil gateway; send tensors in the request"
    return None


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
    are assigned from the peer address (``source == "peer"``)."""
    if source == "peer":
        if header is not None or in_parameters:
            raise ValueError(f"client ids are assigned by this gateway; do not send '{CLIENT_ID_KEY}'")
        return f"peer:{peer_host(peer)}"
    if header is not None:
        return normalise_client_id(header, max_bytes=max_bytes)
    if in_parameters:
        return None  # the defense validates the parameter itself
    return f"peer:{peer_host(peer)}"
