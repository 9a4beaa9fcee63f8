"""Triton model ``tokenizer``: TYPE_STRING text -> the classifier's integer input tensors.

The ``fingerprint`` and ``sequence`` tensors are computed only for a request that asks for them
(an ensemble asks for what its step maps): the ``ensemble`` layout's defense step reads them; the
hosted defense step fingerprints the tokens itself, and an undefended deployment needs none, so
the undefended baseline's tokenizer does no more than a tokenizer without Veil."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from veil import wire
from veil.python_backend.tokens import InputError, TextEncoder, decode_texts
from veil.python_backend.triton.common import input_array, internal, invalid, parameters, version_dir


def check_visible(text: str, row: int) -> None:
    """Control characters inside a text are normalised away by the tokenizer; a text made only of
    them (and whitespace) would be classified as an empty text, so it is refused like one."""
    if not any(ch.isprintable() and not ch.isspace() for ch in text):
        raise InputError(f"text at row {row} has no visible characters (only control or format characters)")


def wants_fingerprints(request) -> bool:
    """Whether the request asks for ``fingerprint`` or ``sequence`` (a request that names no
    outputs asks for all of them)."""
    names = request.requested_output_names() if hasattr(request, "requested_output_names") else []
    return not names or bool({wire.FINGERPRINT, wire.SEQUENCE} & set(names))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = parameters(args)
        self.encoder = TextEncoder(
            version_dir(args) / "tokenizer",
            input_names=params["input_names"].split(","),
            max_length=int(params["max_length"]),
        )
        self.max_text_bytes = int(params["max_text_bytes"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                raw = input_array(request, wire.TEXT)
                if raw.ndim != 2 or raw.shape[1] != 1:
                    raise InputError(f"text must have shape [batch, 1], got {list(raw.shape)}")
                texts = decode_texts(raw[:, 0], max_text_bytes=self.max_text_bytes)
                if not texts:
                    raise InputError("empty batch: send at least one text")
                for row, text in enumerate(texts):
                    check_visible(text, row)
            except (InputError, ValueError) as err:
                responses.append(invalid(str(err)))
                continue
            try:
                tensors = self.encoder(texts, fingerprints=wants_fingerprints(request))
            except Exception as err:
                responses.append(internal(f"tokenizer failed: {err}"))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in tensors.items()]))
        return responses
