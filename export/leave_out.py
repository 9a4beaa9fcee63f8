"""Leave-out part models: what a model that never trained on a training text gives for it.

An exact copy of a training text is the query whose honest answer the served model cannot give:
it trained on the text. The selective map makes members' outputs *as a population* look like
non-members', but a per-example attack (LiRA) compares each output with reference models that
never saw that text, and only such a model knows where a non-member of that difficulty lands. So
at build time the defender trains ``parts`` models, each on the training texts outside one seeded
part, with the served model's settings, and keeps each text's logits from the model that left it
out. The part models are never served: calibration turns their logits into one score per text and
class (:func:`veil.python_backend.calibrate.fit_leave_out`), looked up when a query is an exact
copy. The served model is not retrained. Cost: ``parts`` trainings on ``(parts - 1) / parts`` of
the texts each (2 parts: about one more fine-tuning).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from veil.export.data import TextDataset
from veil.export.train import TrainReport
from veil.python_backend.calibrate import LeaveOutRows

PARTS = 2
"""Part models measured (development seed 7, AG News: LiRA's excess over label-only +1.6 -> -0.4 pt,
``python -m veil.privacy.ablate_lira``). Opt-in (``veil-build --leave-out 2``): served on AG News
seed 11, a copy then disagreed with its own edits (served through the near-copy map of the served
model's scores) and the learned augmentation attack read 71% (docs/evaluation.md)."""


def parts_of(n: int, *, parts: int, seed: int) -> np.ndarray:
    """[n] the part (0 .. parts - 1) each training text is left out of: seeded, balanced."""
    return np.random.default_rng([seed, 0x1EAF]).permutation(n) % parts


def train_leave_out(
    members: TextDataset,
    calibration: list[str],
    *,
    fit: Callable[..., TrainReport],
    folder: Callable[[int], Path],
    key: dict,
    parts: int,
    model: str,
    num_labels: int,
    max_length: int,
    seed: int,
    resume: bool,
    log: Callable[[str], None] = print,
) -> LeaveOutRows:
    """Train with ``fit(model, tokenizer, data, seed=...)`` (the served model's fine-tuning), or
    reuse with ``resume`` and the same ``key``, the part models; ``folder(k)`` is part ``k``'s
    directory. Returns each training text's held-out logits and every part model's logits on the
    ``calibration`` texts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from veil.export.train import load_model, predict_logits

    part = parts_of(len(members), parts=parts, seed=seed)
    held = np.zeros((len(members), num_labels), dtype=np.float32)
    on_calibration = []
    for k in range(parts):
        where = folder(k)
        stamp = where / "trained.json"
        want = {**key, "part": k, "parts": parts}
        if resume and stamp.exists() and json.loads(stamp.read_text()) == want:
            net = AutoModelForSequenceClassification.from_pretrained(where, local_files_only=True).eval()
            tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
        else:
            net, tok = load_model(model, num_labels=num_labels, seed=seed + 1 + k)
            rep = fit(net, tok, members.subset(np.flatnonzero(part != k)), seed=seed + 1 + k)
            log(f"leave-out part model {k + 1}/{parts} on {int((part != k).sum())} texts in {rep.seconds:.0f}s")
            where.mkdir(parents=True, exist_ok=True)
            net.save_pretrained(where)
            tok.save_pretrained(where)
            stamp.write_text(json.dumps(want))
        rows = np.flatnonzero(part == k)
        held[rows] = predict_logits(net.eval(), tok, [members.texts[i] for i in rows], max_length=max_length)
        on_calibration.append(predict_logits(net, tok, list(calibration), max_length=max_length))
    return LeaveOutRows(held_out_logits=held, calibration_logits=on_calibration)
