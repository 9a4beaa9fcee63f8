"""Triton model ``classifier`` on the embedded server: the exported ONNX file run by onnxruntime.

NVIDIA's container serves the same file with ``backend: "onnxruntime"`` under the same name and
I/O; this adapter exists because the pip-installed Triton has no onnxruntime backend. It answers
with every output of the graph, so it also serves ``classifier_softmax`` (the undefended
baseline: softmax and argmax inside the graph). :func:`run_grouped` is shared with the defense
step when it hosts the classifier session itself.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from veil.python_backend.artifact import sha256_file
from veil.python_backend.onnx_classifier import OnnxClassifier
from veil.python_backend.triton.common import internal, invalid, optional_input, parameters, version_dir

Feed = dict[str, np.ndarray]


def load_classifier(args: dict, path: Path, *, expected_sha256: str | None) -> OnnxClassifier:
    """The ONNX session of this instance (its device when the instance is KIND_GPU)."""
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise RuntimeError(f"{path} does not match the classifier this repository was built for")
    gpu = args.get("model_instance_kind") == "GPU"
    device = int(args.get("model_instance_device_id", 0)) if gpu else None
    params = parameters(args)
    model = OnnxClassifier(
        path, device_id=device, threads=int(params.get("threads", "0")), spin=params.get("spin", "1") != "0"
    )
    if gpu and "CUDAExecutionProvider" not in model.providers:
        raise RuntimeError(
            "instance is KIND_GPU but onnxruntime offers no CUDAExecutionProvider here: install onnxruntime-gpu"
            " in the python backend's environment, or write the repository with defense_layout='ensemble'"
        )
    return model


def token_feed(model: OnnxClassifier, request) -> Feed:
    """The request's token tensors; ``ValueError`` (the caller's error) unless they share one 2-D shape."""
    feed = {name: optional_input(request, name) for name in model.input_names}
    missing = [n for n, v in feed.items() if v is None]
    if missing:
        raise ValueError(f"missing input(s) {missing}")
    shapes = {v.shape for v in feed.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"inputs must share one [batch, sequence] shape, got {sorted(shapes)}")
    return feed


def run_grouped(model: OnnxClassifier, feeds: dict[int, Feed]) -> dict[int, dict[str, np.ndarray] | Exception]:
    """One session run per sequence length over all requests of that length (the tokenizer pads
    to power-of-two buckets, so a dynamic batch has few); each request gets its rows back, or the
    exception of its group's run."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, feed in feeds.items():
        groups[next(iter(feed.values())).shape[1]].append(i)
    out: dict[int, dict[str, np.ndarray] | Exception] = {}
    for members in groups.values():
        try:
            batch = {n: np.concatenate([feeds[i][n] for i in members]) for n in model.input_names}
            result = model.outputs(batch)
        except Exception as err:
            out.update(dict.fromkeys(members, err))
            continue
        start = 0
        for i in members:
            n = len(feeds[i][model.input_names[0]])
            out[i] = {name: value[start : start + n] for name, value in result.items()}
            start += n
    return out


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        expected = parameters(args).get("classifier_sha256")
        self.model = load_classifier(args, version_dir(args) / "model.onnx", expected_sha256=expected)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        feeds: dict[int, Feed] = {}
        for i, request in enumerate(requests):
            try:
                feeds[i] = token_feed(self.model, request)
            except ValueError as err:
                responses[i] = invalid(str(err))
        for i, result in run_grouped(self.model, feeds).items():
            if isinstance(result, Exception):
                responses[i] = internal(f"classifier failed: {result}")
            else:
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in result.items()])
        return responses
