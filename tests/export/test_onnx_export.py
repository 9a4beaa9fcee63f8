from __future__ import annotations

import numpy as np
import pytest

from veil.export.onnx_export import Parity, ParityError, check_parity, export_onnx, with_softmax
from veil.export.train import TINY, load_model, model_input_names

TEXTS = ["a good film", "the plot was awful and far too long for anyone", "ok", "fine " * 60]


@pytest.mark.parametrize("name", TINY)
def test_every_architecture_exports_with_parity(name, tmp_path):
    model, tokenizer = load_model(name, num_labels=3)
    tokenizer.save_pretrained(tmp_path / "tok")
    names = export_onnx(model, tokenizer, tmp_path / "m.onnx")
    assert names == model_input_names(model)
    if name in ("tiny-distilbert", "tiny-roberta", "tiny-deberta"):
        assert "token_type_ids" not in names
    else:
        assert "token_type_ids" in names
    parity = check_parity(model, tokenizer, tmp_path / "m.onnx", tmp_path / "tok", TEXTS, max_length=48)
    parity.check()
    assert parity.rows == len(TEXTS) and parity.max_abs_diff <= 1e-4


def test_dynamic_axes(tmp_path):
    import onnxruntime as ort

    model, tokenizer = load_model("tiny-bert", num_labels=2)
    export_onnx(model, tokenizer, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch, seq in ((1, 5), (7, 40)):
        feed = {i.name: np.ones((batch, seq), np.int64) for i in sess.get_inputs()}
        assert sess.run(None, feed)[0].shape == (batch, 2)


def test_an_export_never_rewrites_a_file_a_repository_links(tmp_path):
    """Repositories hard-link the classifier and the part models: exporting again over the same
    path writes a new file, and the linked one keeps the bytes it was written with."""
    import os

    model, tokenizer = load_model("tiny-bert", num_labels=2)
    path, linked = tmp_path / "m.onnx", tmp_path / "repository_copy.onnx"
    export_onnx(model, tokenizer, path)
    os.link(path, linked)
    before = linked.read_bytes()
    other, _ = load_model("tiny-bert", num_labels=3)  # a different graph (three classes)
    export_onnx(other, tokenizer, path)
    assert linked.read_bytes() == before != path.read_bytes()
    assert path.stat().st_ino != linked.stat().st_ino
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing half-written left


def test_a_failed_export_leaves_the_old_file_and_nothing_half_written(tmp_path, monkeypatch):
    import torch

    model, tokenizer = load_model("tiny-bert", num_labels=2)
    path = tmp_path / "m.onnx"
    export_onnx(model, tokenizer, path)
    before = path.read_bytes()

    def dies_half_way(_model, _args, f, **_kwargs):
        with open(f, "wb") as out:
            out.write(b"half an onnx graph")
        raise RuntimeError("exporter died")

    monkeypatch.setattr(torch.onnx, "export", dies_half_way)
    with pytest.raises(RuntimeError, match="exporter died"):
        export_onnx(model, tokenizer, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_parity_failure_prints_both_numbers():
    with pytest.raises(ParityError, match=r"max \|logit difference\| = 0.01 .* identical argmax: False"):
        Parity(rows=4, max_abs_diff=0.01, argmax_equal=False).check()


def test_softmax_graph_serves_what_the_python_softmax_serves(tmp_path):
    """The undefended baseline's graph: same inputs, probabilities = softmax(logits) and label =
    argmax (first on ties, [batch, 1] int64), for several batch and sequence sizes."""
    from veil.python_backend.onnx_classifier import OnnxClassifier
    from veil.python_backend.probabilities import softmax

    model, tokenizer = load_model("tiny-bert", num_labels=3)
    export_onnx(model, tokenizer, tmp_path / "m.onnx")
    with_softmax(tmp_path / "m.onnx", tmp_path / "sm.onnx")
    logits, baseline = OnnxClassifier(tmp_path / "m.onnx"), OnnxClassifier(tmp_path / "sm.onnx")
    assert baseline.input_names == logits.input_names and baseline.output_names == ["probabilities", "label"]
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 5), (6, 33)):
        feed = {n: np.zeros((batch, seq), np.int64) for n in logits.input_names}  # token types 0
        feed["input_ids"] = rng.integers(1, 100, (batch, seq))
        feed["attention_mask"] = np.ones((batch, seq), np.int64)
        z, out = logits(feed), baseline.outputs(feed)
        np.testing.assert_allclose(out["probabilities"], softmax(z), atol=1e-6)
        assert out["label"].dtype == np.int64 and out["label"].shape == (batch, 1)
        np.testing.assert_array_equal(out["label"][:, 0], z.argmax(1))
