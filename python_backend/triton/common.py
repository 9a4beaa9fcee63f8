"""Request parsing and error responses shared by the adapters."""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from veil.wire import CLIENT_ID_KEY  # noqa: F401  (re-exported)


def parameters(args: dict) -> dict[str, str]:
    """The model config's ``parameters`` as plain strings."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


def device_of(args: dict) -> str:
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args.get('model_instance_device_id', 0))}"
    return "cpu"


def request_parameters(request) -> dict:
    raw = request.parameters()
    if not raw:
        return {}
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def invalid(message: str):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal(message: str):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
    )


def input_array(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"missing input {name!r}")
    return tensor.as_numpy()


def optional_input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
