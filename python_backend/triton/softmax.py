"""Triton model ``softmax``: the raw (undefended) endpoint's last step, for benchmarks only."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from veil import wire
from veil.python_backend.probabilities import check_logits, softmax
from veil.python_backend.triton.common import input_array, invalid


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        pass

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                logits = input_array(request, wire.LOGITS)
                check_logits(logits)
            except ValueError as err:
                responses.append(invalid(str(err)))
                continue
            probs = softmax(logits)
            label = probs.argmax(1).astype(np.int64)[:, None]
            responses.append(
                pb_utils.InferenceResponse(
                    [pb_utils.Tensor(wire.PROBABILITIES, probs), pb_utils.Tensor(wire.LABEL, label)]
                )
            )
        return responses
