"""Leave-out part models: what a model that never trained on a training text gives for it.

An exact copy of a training text is the query whose honest answer the served model cannot give:
it trained on the text. The selective map makes members' outputs *as a population* look like
non-members', but a per-example attack (LiRA) compares each output with reference models that
never saw that text, and only such a model knows where a non-member of that difficulty lands. So
at build time the defender trains ``parts`` models, each on the training texts outside one seeded
part, with the served model's settings, and keeps each text's logits from the model that left it
out. The part models are exported to ONNX beside the defense artifact (:func:`export_parts`): the
defense step answers every whole match of a training text (its copy and its near copies) with
the part model that never trained on it, on the query's tokens, moved onto this model's
non-member scale (:func:`veil.python_backend.calibrate.leave_out_scale`). The served model is
not retrained. Every row sent as tokens runs through one part model, matched or not (run on the
whole matches only, the extra pass made training texts slower to answer: a caller could time it,
:data:`PARTS`), beside the served model's forward pass. Cost: ``parts`` trainings on
``(parts - 1) / parts`` of the texts each (2 parts: about one more fine-tuning), ``parts`` more ONNX
files in the repository, and a second forward pass for every request.
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
"""Part models measured (``veil-build --leave-out 2``; opt-in, off by default). Development seed 7,
AG News (``python -m veil.privacy.ablate_lira``): a copy answered alone by its part model took
LiRA's excess over label-only from +1.6 to -0.3 pt but, served on AG News seed 11, disagreed with
its own edits (augmentation attack 71%); copies and near copies answered by the same part model
keep LiRA at -0.3 and every augmentation attack at or under label-only's. Served on AG News, seed
13's excess fell from +1.5 to 0.0, but seed 11's rose to +3.5 (repeats at full speed under
adaptive intensity): the forward pass run only on gated rows made them slower, a timing side
channel (docs/evaluation.md, "Part models for whole matches"), closed since by running every row
through a part model (latency AUC 0.990 -> 0.493 on AG News seed 11; docs/defense.md)."""


def parts_of(n: int, *, parts: int, seed: int) -> np.ndarray:
    """[n] the part (0 .. parts - 1) each training text is left out of: seeded, balanced."""
    return np.random.default_rng([seed, 0x1EAF]).permutation(n) % parts


def load_part(folder: Path):
    """A part model and its tokenizer as trained (``folder``: :meth:`BuildDir.leave_out`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    return net, AutoTokenizer.from_pretrained(folder, local_files_only=True)


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
    from veil.export.train import load_model, predict_logits

    part = parts_of(len(members), parts=parts, seed=seed)
    held = np.zeros((len(members), num_labels), dtype=np.float32)
    on_calibration = []
    for k in range(parts):
        where = folder(k)
        stamp = where / "trained.json"
        want = {**key, "part": k, "parts": parts}
        if resume and stamp.exists() and json.loads(stamp.read_text()) == want:
            net, tok = load_part(where)
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
    return LeaveOutRows(held_out_logits=held, calibration_logits=on_calibration, parts=part)


def export_parts(
    *,
    folder: Callable[[int], Path],
    directory: Path,
    parts: int,
    tokenizer_dir: Path,
    parity_texts: list[str],
    max_length: int,
    exporter: str,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Each part model (``folder(k)``) exported to ONNX beside the defense artifact in
    ``directory`` (:func:`~veil.python_backend.artifact.part_model_file`), checked against PyTorch
    on ``parity_texts`` as the served tokenizer (``tokenizer_dir``) encodes them; their sha256s."""
    from veil.export.onnx_export import check_parity, export_onnx
    from veil.python_backend.artifact import part_model_file, sha256_file

    digests = []
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(parts):
        net, tok = load_part(folder(k))
        path = part_model_file(directory, k)
        export_onnx(net, tok, path, exporter=exporter)
        parity = check_parity(net, tok, path, tokenizer_dir, parity_texts, max_length=max_length)
        log(f"leave-out part model {k + 1}/{parts} in ONNX: max |logit diff| {parity.max_abs_diff:.2e}")
        parity.check()
        digests.append(sha256_file(path))
    return digests
