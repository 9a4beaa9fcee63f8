from __future__ import annotations

import numpy as np
import pytest

from veil.export.onnx_export import Parity, ParityError, check_parity, export_onnx
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


def test_parity_failure_prints_both_numbers():
    with pytest.raises(ParityError, match=r"max \|logit difference\| = 0.01 .* identical argmax: False"):
        Parity(rows=4, max_abs_diff=0.01, argmax_equal=False).check()
