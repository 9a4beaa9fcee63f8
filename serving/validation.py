"""Inference requests checked strictly before anything reaches Triton (pure, no I/O).

Triton and Python read some malformed requests differently (duplicate JSON keys: Python keeps the
last, Triton the first; a batch dimension of 2^32 + k wraps to k in Triton's HTTP parser), and
answer others with a 500. So the gateway parses the KServe v2 JSON itself with strict rules, checks
every field it forwards over both protocols with the same functions, and forwards what it checked
(the HTTP JSON header is re-serialised): one answer per mistake, the caller's 4xx /
INVALID_ARGUMENT with a sentence naming the mistake.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator

from veil.serving.policy import Limits
from veil.wire import CLIENT_ID_KEY, canonical_client_id

INT64_MAX = (1 << 63) - 1
DATATYPES = frozenset(
    "BOOL UINT8 UINT16 UINT32 UINT64 INT8 INT16 INT32 INT64 FP16 FP32 FP64 BF16 BYTES".split()  # noqa: SIM905
)
_TOP_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
}
_REASONS = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not-found",
    408: "slow-body",
    413: "too-large",
    415: "compressed",
    429: "busy",
}


class CallerError(ValueError):
    """A mistake in the caller's request: ``status`` is the HTTP answer, ``grpc_code`` the gRPC one."""

    retry_after: int | None = None
    """Seconds after which a retry may succeed (HTTP ``Retry-After``, gRPC ``retry-after``), if known."""

    def __init__(self, message: str, *, status: int = 400, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or _REASONS.get(status, str(status))
        """A short word for the audit log (never the message, which may quote the request)."""

    @property
    def grpc_code(self) -> str:
        return _GRPC_CODES.get(self.status, "INVALID_ARGUMENT")


# -- shared by both protocols --------------------------------------------------------------------


def check_version(version: str) -> None:
    """Model versions are 1-9 ASCII digits on both protocols (HTTP's route allows nothing else)."""
    if version and not (len(version) <= 9 and version.isascii() and version.isdigit()):
        raise CallerError(f"model version {version[:40]!r} is not a version number (1-9 digits)", status=404)


def _text_bytes(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise CallerError(f"{what} is not valid Unicode (lone surrogate)") from None


def check_parameters(params: dict[str, object], where: str, *, limits: Limits) -> None:
    """Parameter maps: few keys, short strings, 64-bit integers, finite numbers, no nesting."""
    if len(params) > limits.max_parameters:
        raise CallerError(f"{where} has {len(params)} parameters; the limit is {limits.max_parameters}")
    for key, value in params.items():
        if _text_bytes(key, f"a parameter name of {where}") > 128:
            raise CallerError(f"a parameter name of {where} is longer than 128 bytes")
        if key.startswith("shared_memory"):
            raise CallerError("shared memory is not available through the Veil gateway; send tensors in the request")
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            if not -INT64_MAX - 1 <= value <= INT64_MAX:
                raise CallerError(f"parameter '{key}' of {where} is out of the 64-bit integer range")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise CallerError(f"parameter '{key}' of {where} is not a finite number")
        elif isinstance(value, str):
            if _text_bytes(value, f"parameter '{key}' of {where}") > limits.max_parameter_bytes:
                raise CallerError(f"parameter '{key}' of {where} is longer than {limits.max_parameter_bytes} bytes")
        else:
            raise CallerError(f"parameter '{key}' of {where} must be a string, number or boolean")


def check_shape(shape: object, name: str, *, limits: Limits) -> int:
    """Dimensions are non-negative 64-bit integers, the batch dimension at most ``max_batch_size``;
    returns the element count (bounded by ``max_elements``)."""
    if not isinstance(shape, list) or not shape or len(shape) > limits.max_dims:
        raise CallerError(f"input '{name}': 'shape' must be a list of 1 to {limits.max_dims} dimensions")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise CallerError(f"input '{name}': every dimension must be an integer, got {json.dumps(dim)[:40]}")
        if dim < 0:
            raise CallerError(f"input '{name}': dimension {dim} is negative")
        if dim > INT64_MAX:
            raise CallerError(f"input '{name}': dimension {dim} is out of the 64-bit integer range")
    if shape[0] > limits.max_batch_size:
        raise CallerError(f"input '{name}': batch-size must be <= {limits.max_batch_size}, got {shape[0]}")
    count = math.prod(shape)
    if count > limits.max_elements:
        raise CallerError(f"input '{name}': {count} elements; the limit is {limits.max_elements}")
    return count


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or _text_bytes(name, what) > 128:
        raise CallerError(f"{what} must be a non-empty string of at most 128 bytes")
    return name


def check_unique(name: str, seen: set[str]) -> str:
    """Input names appear once (which copy Triton would take is not for the caller to find out)."""
    if name in seen:
        raise CallerError(f"input '{name}' appears more than once")
    seen.add(name)
    return name


def check_datatype(datatype: object, name: str) -> str:
    if datatype not in DATATYPES:
        raise CallerError(f"input '{name}': unknown datatype {json.dumps(datatype)[:40]}")
    return datatype


def check_text_total(total: int, *, limits: Limits) -> None:
    """Bounded text per request keeps the tokenizer's memory (and every later step's) bounded."""
    if total > limits.max_text_bytes:
        raise CallerError(
            f"the request carries {total} bytes of text; the limit is {limits.max_text_bytes} per request"
            " (send fewer or shorter texts per request)",
            status=413,
        )


def canonical_id_parameter(params: dict[str, object], *, limits: Limits) -> bool:
    """Replace a client id parameter by its canonical spelling; True when there is one."""
    if CLIENT_ID_KEY not in params:
        return False
    try:
        params[CLIENT_ID_KEY] = canonical_client_id(params[CLIENT_ID_KEY], max_bytes=limits.max_client_id_bytes)
    except ValueError as err:
        raise CallerError(str(err)) from None
    return True


# -- HTTP: the KServe v2 JSON header -------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise CallerError(f"duplicate key {dup[:40]!r} in the JSON header (each key may appear once)")
    return doc


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:
        raise CallerError(f"number {text[:24]}... has more than 20 digits")
    return int(text)


def _no_constant(name: str) -> float:
    raise CallerError(f"{name} is not a number JSON allows")


def parse_json_header(raw: bytes, *, limits: Limits) -> dict[str, object]:
    """The JSON header as a dict, parsed strictly (UTF-8, unique keys, no NaN/Infinity, no huge
    numbers, bounded nesting); a caller's mistake raises :class:`CallerError`."""
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_int=_bounded_int, parse_constant=_no_constant)
    except CallerError as err:
        raise CallerError(f"malformed inference request: {err}") from None
    except RecursionError:
        raise CallerError("malformed inference request: the JSON header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise CallerError(f"malformed inference request: the JSON header is not valid JSON ({err})") from None
    _check_depth(doc, limits.max_json_depth)
    if not isinstance(doc, dict):
        raise CallerError("malformed inference request: the inference request must be a JSON object")
    return doc


def _check_depth(doc: object, limit: int) -> None:
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise CallerError(f"malformed inference request: the JSON header is nested deeper than {limit} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise CallerError("malformed inference request: a number is out of range (e.g. 1e400)")


def _object(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise CallerError(f"malformed inference request: '{where}' must be a JSON object")
    return value


def _list(value: object, where: str, limit: int) -> list[object]:
    if not isinstance(value, list):
        raise CallerError(f"malformed inference request: '{where}' must be a JSON array")
    if len(value) > limit:
        raise CallerError(f"malformed inference request: '{where}' has {len(value)} entries; the limit is {limit}")
    return value


def _flat(data: object) -> Iterator[object]:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            yield item


def _unknown(keys: Iterable[str], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise CallerError(f"malformed inference request: unknown field {extra[0][:40]!r} in {where}")


def check_http_infer(doc: dict[str, object], binary_bytes: int, *, limits: Limits) -> bool:
    """Check a parsed JSON header (``binary_bytes``: the body after it) in place, writing the
    canonical client id back; True when the request names its client in its parameters."""
    _unknown(doc, _TOP_KEYS, "the request")
    if "id" in doc and (not isinstance(doc["id"], str) or _text_bytes(doc["id"], "'id'") > 256):
        raise CallerError("malformed inference request: 'id' must be a string of at most 256 bytes")
    params = _object(doc.get("parameters", {}), "parameters")
    has_id = canonical_id_parameter(params, limits=limits)
    check_parameters(params, "the request", limits=limits)
    text_total = binary_total = 0
    names: set[str] = set()
    for entry in _list(doc.get("inputs", []), "inputs", limits.max_tensors):
        item = _object(entry, "every entry of 'inputs'")
        _unknown(item, _INPUT_KEYS, "an input")
        name = check_unique(check_name(item.get("name"), "an input's 'name'"), names)
        datatype = check_datatype(item.get("datatype"), name)
        count = check_shape(item.get("shape"), name, limits=limits)
        iparams = _object(item.get("parameters", {}), f"parameters' of input '{name}")
        check_parameters(iparams, f"input '{name}'", limits=limits)
        size = iparams.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise CallerError(f"input '{name}': 'binary_data_size' must be a non-negative integer")
            if "data" in item:
                raise CallerError(f"input '{name}': send either 'data' or 'binary_data_size', not both")
            binary_total += size
            text_total += size if datatype == "BYTES" else 0
        elif "data" in item:
            text_total += _check_data(item["data"], name, datatype, count)
    if binary_total != binary_bytes:
        raise CallerError(
            f"the binary tensors' 'binary_data_size' add up to {binary_total} bytes, but {binary_bytes} bytes"
            " follow the JSON header"
        )
    check_text_total(text_total, limits=limits)
    for entry in _list(doc.get("outputs", []), "outputs", limits.max_tensors):
        item = _object(entry, "every entry of 'outputs'")
        _unknown(item, _OUTPUT_KEYS, "an output")
        name = check_name(item.get("name"), "an output's 'name'")
        oparams = _object(item.get("parameters", {}), f"parameters' of output '{name}")
        check_parameters(oparams, f"output '{name}'", limits=limits)
        _check_output_parameters(oparams, name)
    return has_id


def _check_data(data: object, name: str, datatype: str, count: int) -> int:
    """JSON tensor data: as many elements as the shape says, each of the datatype's kind; returns
    the UTF-8 bytes of a BYTES tensor (0 otherwise)."""
    items = list(_flat(data)) if isinstance(data, list) else [data]
    if len(items) != count:
        raise CallerError(f"input '{name}': 'data' has {len(items)} elements, the shape says {count}")
    total = 0
    for value in items:
        if datatype == "BYTES":
            if not isinstance(value, str):
                raise CallerError(f"input '{name}': every text must be a JSON string, got {json.dumps(value)[:40]}")
            total += _text_bytes(value, f"a text of input '{name}'")
        elif datatype == "BOOL":
            if not isinstance(value, bool):
                raise CallerError(f"input '{name}': every element must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CallerError(f"input '{name}': every element must be a number")
    return total


def _check_output_parameters(params: dict[str, object], name: str) -> None:
    for key in ("binary_data",):
        if key in params and not isinstance(params[key], bool):
            raise CallerError(f"output '{name}': '{key}' must be true or false")
    k = params.get("classification")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 1 << 16):
        raise CallerError(f"output '{name}': 'classification' must be an integer from 0 to 65536")


def parse_header_length(value: str | None, body_bytes: int) -> int:
    """``Inference-Header-Content-Length``: ASCII digits only (Python's ``int`` also reads ``1_04``
    and non-ASCII digits, which Triton reads differently), within the body."""
    if value is None:
        return body_bytes
    if not (value.isascii() and value.isdigit() and len(value) <= 12) or int(value) > body_bytes:
        raise CallerError(f"Inference-Header-Content-Length {value[:40]!r} does not fit the {body_bytes}-byte body")
    return int(value)


# -- gRPC: ModelInferRequest ---------------------------------------------------------------------


def grpc_parameters(params) -> dict[str, object]:
    """A protobuf ``map<string, InferParameter>`` as plain values (for :func:`check_parameters`)."""
    out: dict[str, object] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, kind) if kind else None
    return out


def check_grpc_infer(request, *, limits: Limits) -> bool:
    """The gRPC twin of :func:`check_http_infer` (same rules and messages); the canonical client id
    is written back. True when the request names its client in its parameters."""
    check_version(request.model_version)
    if len(request.id.encode("utf-8")) > 256:
        raise CallerError("malformed inference request: 'id' must be a string of at most 256 bytes")
    params = grpc_parameters(request.parameters)
    has_id = canonical_id_parameter(params, limits=limits)
    check_parameters(params, "the request", limits=limits)
    if has_id:
        request.parameters[CLIENT_ID_KEY].string_param = params[CLIENT_ID_KEY]
    if len(request.inputs) > limits.max_tensors or len(request.outputs) > limits.max_tensors:
        raise CallerError(f"malformed inference request: at most {limits.max_tensors} inputs and outputs")
    if len(request.raw_input_contents) not in (0, len(request.inputs)):
        raise CallerError(
            f"{len(request.raw_input_contents)} raw input contents for {len(request.inputs)} inputs (one per input)"
        )
    text_total = 0
    names: set[str] = set()
    for i, tensor in enumerate(request.inputs):
        name = check_unique(check_name(tensor.name, "an input's 'name'"), names)
        datatype = check_datatype(tensor.datatype, name)
        check_shape(list(tensor.shape), name, limits=limits)
        check_parameters(grpc_parameters(tensor.parameters), f"input '{name}'", limits=limits)
        if datatype == "BYTES":
            if request.raw_input_contents:
                text_total += len(request.raw_input_contents[i])
            else:
                text_total += sum(len(b) for b in tensor.contents.bytes_contents)
    check_text_total(text_total, limits=limits)
    for tensor in request.outputs:
        name = check_name(tensor.name, "an output's 'name'")
        oparams = grpc_parameters(tensor.parameters)
        check_parameters(oparams, f"output '{name}'", limits=limits)
        _check_output_parameters(oparams, name)
    return has_id
