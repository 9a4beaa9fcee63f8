"""tokens -> logits with onnxruntime, for the embedded server (which has no onnxruntime backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class OnnxClassifier:
    def __init__(self, path: str | Path, *, device_id: int | None = None, threads: int = 0, spin: bool = True) -> None:
        """``threads``: intra-op threads (0: onnxruntime's default, one per core). ``spin``: idle pool
        threads busy-wait for the next run (onnxruntime's default); off, they sleep, which leaves the
        cores to the other processes of a server that has more of them than cores."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_name = self.output_names[0]
        self.providers = self.session.get_providers()

    def _feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(inputs[name], dtype=np.int64) for name in self.input_names}

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The first output (the logits of an exported classifier) as float32."""
        return self.session.run([self.output_name], self._feed(inputs))[0].astype(np.float32, copy=False)

    def outputs(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph by name (e.g. probabilities and label of the baseline graph)."""
        return dict(zip(self.output_names, self.session.run(self.output_names, self._feed(inputs)), strict=True))
