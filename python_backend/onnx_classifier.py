"""tokens -> logits with onnxruntime, for the embedded server (which has no onnxruntime backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxClassifier:
    def __init__(self, path: str | Path, *, device_id: int | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: np.ascontiguousarray(inputs[name], dtype=np.int64) for name in self.input_names}
        return self.session.run([self.output_name], feed)[0].astype(np.float32, copy=False)
