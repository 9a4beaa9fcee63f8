from __future__ import annotations

import numpy as np

from veil.export.data import TextDataset
from veil.export.train import fine_tune, load_model, predict_logits

from ..conftest import synthetic_rows


def test_tiny_model_learns_and_overfits():
    rows = synthetic_rows(120, seed=5)
    ds = TextDataset([t for t, _ in rows], np.array([y for _, y in rows]), ["neg", "pos"])
    model, tok = load_model("tiny-bert", num_labels=2, seed=0)
    before = predict_logits(model, tok, ds.texts, max_length=32)
    report = fine_tune(model, tok, ds, epochs=12, lr=2e-3, batch_size=16, max_length=32, progress=False)
    after = predict_logits(model, tok, ds.texts, max_length=32)
    assert report.train_accuracy >= 0.9
    assert (after.argmax(1) == ds.labels).mean() > (before.argmax(1) == ds.labels).mean()
