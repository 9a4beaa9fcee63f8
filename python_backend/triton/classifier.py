"""Triton model ``classifier`` on the embedded server: the exported ONNX file run by onnxruntime.

NVIDIA's container serves the same file with ``backend: "onnxruntime"`` under the same name and
I/O; this adapter exists because the pip-installed Triton has no onnxruntime backend.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import triton_python_backend_utils as pb_utils

from veil import wire
from veil.python_backend.artifact import sha256_file
from veil.python_backend.onnx_classifier import OnnxClassifier
from veil.python_backend.triton.common import input_array, internal, invalid, parameters, version_dir


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = parameters(args)
        path = version_dir(args) / "model.onnx"
        expected = params.get("classifier_sha256")
        if expected and sha256_file(path) != expected:
            raise RuntimeError(f"{path} does not match the classifier this repository was built for")
        device = int(args.get("model_instance_device_id", 0)) if args.get("model_instance_kind") == "GPU" else None
        self.model = OnnxClassifier(path, device_id=device, threads=int(params.get("threads", "0")))

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        groups: dict[int, list[tuple[int, dict[str, np.ndarray]]]] = defaultdict(list)
        for i, request in enumerate(requests):
            try:
                feed = {name: input_array(request, name) for name in self.model.input_names}
                shapes = {v.shape for v in feed.values()}
                if len(shapes) != 1 or len(next(iter(shapes))) != 2:
                    raise ValueError(f"inputs must share one [batch, sequence] shape, got {sorted(shapes)}")
            except ValueError as err:
                responses[i] = invalid(str(err))
                continue
            groups[next(iter(shapes))[1]].append((i, feed))
        for members in groups.values():
            try:
                feed = {n: np.concatenate([f[n] for _, f in members]) for n in self.model.input_names}
                logits = self.model(feed)
            except Exception as err:
                for i, _ in members:
                    responses[i] = internal(f"classifier failed: {err}")
                continue
            start = 0
            for i, f in members:
                n = len(f[self.model.input_names[0]])
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(wire.LOGITS, logits[start : start + n])])
                start += n
        return responses
