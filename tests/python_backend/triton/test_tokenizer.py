from __future__ import annotations

import shutil

import numpy as np

from veil.export.train import packaged_minilm
from veil.python_backend.fingerprint import SIGNATURE_SIZE

from .conftest import FakeRequest, load_adapter, model_args


def tokenizer_model(tmp_path):
    shutil.copytree(
        packaged_minilm(),
        tmp_path / "1" / "tokenizer",
        ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"),
    )
    m = load_adapter("tokenizer").TritonPythonModel()
    m.initialize(
        model_args(
            tmp_path,
            name="tokenizer",
            parameters={
                "input_names": "input_ids,attention_mask",
                "max_length": "16",
                "max_text_bytes": "1000",
            },
        )
    )
    return m


def test_tokenizer_adapter(pb_utils, tmp_path):
    m = tokenizer_model(tmp_path)
    texts = np.array([[b"a fine day"], [b"another one, longer than the first"]], dtype=object)
    responses = m.execute(
        [
            FakeRequest({"text": texts}),
            FakeRequest({"text": np.array([[b""]], dtype=object)}),
            FakeRequest({"text": np.array([[b"\xc3\x28"]], dtype=object)}),
            FakeRequest({"text": np.array([b"flat"], dtype=object)}),
            FakeRequest({"text": np.zeros((0, 1), dtype=object)}),
            FakeRequest({"text": np.array([[b"x" * 2000]], dtype=object)}),
        ]
    )
    ok = responses[0]
    assert ok.error is None and set(ok.tensors) == {"input_ids", "attention_mask", "fingerprint", "sequence"}
    assert ok.tensors["fingerprint"].shape == (2, SIGNATURE_SIZE)
    assert ok.tensors["sequence"].shape == (2, 1) and ok.tensors["sequence"].dtype == np.int64
    assert ok.tensors["input_ids"].shape == (2, 16)
    msgs = [r.error.message() for r in responses[1:]]
    assert "empty or whitespace" in msgs[0]
    assert "not valid UTF-8" in msgs[1]
    assert "shape [batch, 1]" in msgs[2]
    assert "empty batch" in msgs[3]
    assert "2000 bytes; the limit is 1000" in msgs[4]


def test_fingerprints_only_for_a_request_that_asks_for_them(pb_utils, tmp_path):
    """An ensemble asks its tokenizer step for what it maps: the undefended baseline and the hosted
    defense step (which fingerprints the tokens itself) ask for tokens only, and the tokenizer then
    computes no fingerprint, like a tokenizer without Veil; the ``ensemble`` layout asks for them."""
    m = tokenizer_model(tmp_path)
    text = {"text": np.array([[b"a fine day"]], dtype=object)}
    tokens_only, asked, everything = m.execute(
        [
            FakeRequest(text, outputs=["input_ids", "attention_mask"]),
            FakeRequest(text, outputs=["input_ids", "attention_mask", "fingerprint", "sequence"]),
            FakeRequest(text),
        ]
    )
    assert set(tokens_only.tensors) == {"input_ids", "attention_mask"}
    assert set(asked.tensors) == set(everything.tensors) == {"input_ids", "attention_mask", "fingerprint", "sequence"}
    assert asked.tensors["fingerprint"].tobytes() == everything.tensors["fingerprint"].tobytes()
