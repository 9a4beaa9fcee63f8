"""Export a fine-tuned classifier to ONNX (dynamic batch and sequence axes) and check parity.

The exporter is chosen explicitly: TorchScript-based ``torch.onnx.export(dynamo=False)`` at
opset 17 (the default here: it handles every architecture we serve), or the dynamo exporter
(``dynamo=True``, opset 20, needs onnxscript).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from veil import wire
from veil.export.train import model_input_names, predict_logits
from veil.python_backend.onnx_classifier import OnnxClassifier
from veil.python_backend.tokens import TextEncoder

PARITY_MAX_ABS = 1e-4


class ParityError(RuntimeError):
    pass


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits


def export_onnx(model, tokenizer, path: str | Path, *, exporter: str = "torchscript") -> list[str]:
    """Write ``path``; returns the input names (the model's, in order). Written beside it and
    renamed over it: a new file each time, so a repository that hard-links an earlier export
    (:mod:`veil.model_repository.writer`) keeps the bytes it was written with."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    path = final.with_name(f".{final.name}.writing")
    names = model_input_names(model)
    model.eval()
    sample = tokenizer(
        ["an example sentence", "another, longer example sentence here"], padding=True, return_tensors="pt"
    )
    args = tuple(sample[n] for n in names)
    wrapper = _LogitsOnly(model, names)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    input_names=names,
                    output_names=[wire.LOGITS],
                    dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, wire.LOGITS: {0: "batch"}},
                    opset_version=17,
                    dynamo=False,
                )
            elif exporter == "dynamo":
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                prog = torch.onnx.export(
                    wrapper,
                    args,
                    input_names=names,
                    output_names=[wire.LOGITS],
                    dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
                    opset_version=20,
                    dynamo=True,
                )
                prog.save(str(path))
            else:
                raise ValueError(f"exporter must be 'torchscript' or 'dynamo', not {exporter!r}")
    except BaseException:
        path.unlink(missing_ok=True)  # a failed export leaves nothing half-written behind
        raise
    os.replace(path, final)
    return names


def with_softmax(src: str | Path, dst: str | Path) -> Path:
    """The undefended baseline's classifier: ``src`` with softmax and argmax appended inside the graph
    (``probabilities`` [batch, C] float32, ``label`` [batch, 1] int64, first index on ties), as a user
    who serves the classifier without Veil would export it: nothing runs after it but the server."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    graph = model.graph
    (logits,) = [o for o in graph.output if o.name == wire.LOGITS]
    classes = logits.type.tensor_type.shape.dim[1]
    graph.node.extend(
        [
            helper.make_node("Softmax", [wire.LOGITS], [wire.PROBABILITIES], axis=-1, name="veil_softmax"),
            helper.make_node("ArgMax", [wire.LOGITS], [wire.LABEL], axis=1, keepdims=1, name="veil_argmax"),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(wire.PROBABILITIES, onnx.TensorProto.FLOAT, ["batch", classes.dim_value]),
            helper.make_tensor_value_info(wire.LABEL, onnx.TensorProto.INT64, ["batch", 1]),
        ]
    )
    onnx.checker.check_model(model)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


@dataclass
class Parity:
    rows: int
    max_abs_diff: float
    argmax_equal: bool

    def check(self, tolerance: float = PARITY_MAX_ABS) -> None:
        if self.max_abs_diff > tolerance or not self.argmax_equal:
            raise ParityError(
                f"ONNX parity failed on {self.rows} rows: max |logit difference| = {self.max_abs_diff:.3g}"
                f" (limit {tolerance:g}), identical argmax: {self.argmax_equal}"
            )


def check_parity(
    model, tokenizer, onnx_path: str | Path, tokenizer_dir: str | Path, texts: list[str], *, max_length: int
) -> Parity:
    """Compare PyTorch against the ONNX file as served (same tokenizer folder, same padding)."""
    torch_logits = predict_logits(model, tokenizer, texts, max_length=max_length)
    encoder = TextEncoder(tokenizer_dir, input_names=model_input_names(model), max_length=max_length)
    session = OnnxClassifier(onnx_path)
    onnx_logits = np.concatenate([session(encoder([t])) for t in texts])
    diff = float(np.abs(torch_logits - onnx_logits).max()) if len(texts) else 0.0
    return Parity(len(texts), diff, bool((torch_logits.argmax(1) == onnx_logits.argmax(1)).all()))
