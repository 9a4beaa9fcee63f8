"""``veil-build``: data -> fine-tune -> ONNX (+ parity) -> calibrate the defense -> model repository.

Everything lands in one folder (default ``build/<dataset>-<model>``): ``splits.json``, ``hf/``
(the fine-tuned model and tokenizer), ``model.onnx``, ``defense/``, ``model_repository/`` and
``build.json`` (what was measured on the way).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil.export.build_dir import BuildDir
from veil.export.crops import DEFENDER_TEXTS, defender_crops
from veil.export.data import Splits, TextDataset, dedupe, fingerprint, load_dataset, make_splits
from veil.export.edits import defender_edits
from veil.export.leave_out import export_parts, train_leave_out
from veil.export.onnx_export import check_parity, export_onnx
from veil.export.train import TrainReport, fine_tune, load_model, model_input_names
from veil.model_repository.spec import ServingOptions
from veil.model_repository.writer import write_repository
from veil.python_backend.artifact import sha256_file
from veil.python_backend.calibrate import CalibrationConfig, CropRows, EditRows, LeaveOutRows, calibrate
from veil.python_backend.onnx_classifier import OnnxClassifier
from veil.python_backend.tokens import TextEncoder, text_fingerprints, text_signatures, write_common_tokens
from veil.python_backend.variants import REGISTRY


@dataclass
class BuildConfig:
    dataset: str = "sst2"
    data_dir: str | None = None
    model: str = "minilm"
    out: str | None = None
    seed: int = 0
    members: int = 3000
    nonmembers: int = 3000
    calibration_nonmembers: int | None = None
    """Non-members the defender calibrates on (default: half of ``nonmembers``; the other half is
    held out for evaluation). More calibration rows make the selective map and its confidences
    more exact; they are the defender's own held-out data, never evaluation rows."""
    attacker: int = 0
    crop_texts: int = DEFENDER_TEXTS
    """Texts per side the defender crops for the partial-match map (training texts, calibration non-members)."""
    edit_texts: int = DEFENDER_TEXTS
    """Texts per side the defender edits for the near-copy map."""
    leave_out: int = 0
    """Leave-out part models that answer whole matches of training texts (copies and near copies)
    in the defense step (:mod:`veil.export.leave_out`, :data:`~veil.export.leave_out.PARTS` is the
    measured count; 0: none, whole matches go through the maps). Off by default: the extra forward
    pass on gated rows is a timing side channel, read through adaptive intensity on AG News seed 11
    (docs/evaluation.md, "Part models for whole matches"). Not with a custom trainer (DP-SGD
    targets are served undefended)."""
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    exporter: str = "torchscript"
    parity_rows: int = 64
    variants: tuple[str, ...] = ("veil",)
    mode: str = "benchmark"
    slack: float = CalibrationConfig.slack
    max_batch_size: int = 256
    resume: bool = False
    """Reuse the fine-tuned model in ``out/hf`` when it was trained on the same splits and settings."""
    progress: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"build/{self.dataset}-{self.model.replace('/', '_')}")


def onnx_logits(
    onnx_path: str | Path,
    tokenizer_dir: str | Path,
    input_names: list[str],
    texts: list[str],
    *,
    max_length: int,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Logits of the served ONNX file, tokenized exactly as the served tokenizer does."""
    from tqdm.auto import tqdm

    encoder = TextEncoder(tokenizer_dir, input_names=input_names, max_length=max_length)
    session = OnnxClassifier(onnx_path)
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="scoring (onnx)", disable=not progress):
        out.append(session(encoder(texts[start : start + batch_size])))
    return np.concatenate(out)


def _log(msg: str) -> None:
    print(f"[veil-build] {msg}", flush=True)


Trainer = Callable[[Any, Any, TextDataset], TrainReport]
"""(model, tokenizer, members) -> report: replaces plain fine-tuning (e.g. DP-SGD)."""


def fine_tuner(cfg: BuildConfig) -> Callable[..., TrainReport]:
    """``fit(model, tokenizer, data, seed=...)``: the build's fine-tuning (the served model's and the
    leave-out part models')."""

    def fit(model, tokenizer, data: TextDataset, *, seed: int) -> TrainReport:
        return fine_tune(
            model,
            tokenizer,
            data,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            seed=seed,
            progress=cfg.progress,
        )

    return fit


def leave_out_rows(
    cfg: BuildConfig, members: TextDataset, calibration: list[str], *, key: dict, num_labels: int
) -> LeaveOutRows:
    """The build's ``cfg.leave_out`` part models (trained, or reused with ``cfg.resume`` and the same
    ``key``, under the build folder) and their logits (:func:`veil.export.leave_out.train_leave_out`)."""
    return train_leave_out(
        members,
        calibration,
        fit=fine_tuner(cfg),
        folder=BuildDir(cfg.out_dir).leave_out,
        key=key,
        parts=cfg.leave_out,
        model=cfg.model,
        num_labels=num_labels,
        max_length=cfg.max_length,
        seed=cfg.seed,
        resume=cfg.resume,
        log=_log,
    )


def split_sizes(cfg: BuildConfig) -> dict[str, int]:
    return {
        "member_eval": cfg.members // 2,
        "member_calib": cfg.members - cfg.members // 2,
        "nonmember_eval": cfg.nonmembers // 2,
        "nonmember_calib": (
            cfg.nonmembers - cfg.nonmembers // 2 if cfg.calibration_nonmembers is None else cfg.calibration_nonmembers
        ),
        "attacker": cfg.attacker,
    }


def build(cfg: BuildConfig, *, splits: Splits | None = None, trainer: Trainer | None = None) -> dict:
    """Run the whole build; ``splits`` (drawn elsewhere) and ``trainer`` override the defaults."""
    t0 = time.perf_counter()
    out = cfg.out_dir
    if cfg.leave_out < 0 or cfg.leave_out == 1:
        raise ValueError(f"--leave-out is 0 (none) or at least 2 part models, got {cfg.leave_out}")
    out.mkdir(parents=True, exist_ok=True)
    layout = BuildDir(out)
    ds = dedupe(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir))
    if splits is None:
        splits = make_splits(ds, sizes=split_sizes(cfg), seed=cfg.seed, dataset_name=cfg.dataset)
    elif splits.source_sha256 != fingerprint(ds):
        raise ValueError("the given splits were drawn from another version of the data")
    splits.save(layout.splits_file)
    sizes = {k: len(v) for k, v in splits.indices.items()}
    _log(f"{cfg.dataset}: {len(ds)} deduplicated rows; splits " + ", ".join(f"{k}={v}" for k, v in sizes.items()))

    members = splits.take(ds, "members")
    hf_dir = layout.hf
    train_key = {
        "splits": hashlib.sha256(json.dumps(splits.indices, sort_keys=True).encode()).hexdigest(),
        "model": cfg.model,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "seed": cfg.seed,
        "trainer": getattr(trainer, "key", None),
    }
    trained = layout.trained_file
    if cfg.resume and trained.exists() and json.loads(trained.read_text())["key"] == train_key:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(hf_dir, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
        report = TrainReport(**json.loads(trained.read_text())["report"])
        _log(f"reusing the model fine-tuned earlier in {hf_dir} (--resume)")
    else:
        model, tokenizer = load_model(cfg.model, num_labels=ds.num_classes, seed=cfg.seed)
        if trainer is not None:
            report = trainer(model, tokenizer, members)
        else:
            report = fine_tuner(cfg)(model, tokenizer, members, seed=cfg.seed)
        _log(
            f"fine-tuned {cfg.model} on {len(members)} members in {report.seconds:.0f}s:"
            f" loss {report.final_loss:.4f}, train accuracy {report.train_accuracy:.4f}"
        )
        model.config.id2label = dict(enumerate(ds.label_names))
        model.config.label2id = {name: i for i, name in enumerate(ds.label_names)}
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        trained.write_text(json.dumps({"key": train_key, "report": asdict(report)}, default=str))

    names = model_input_names(model)
    onnx_path = layout.onnx
    export_onnx(model, tokenizer, onnx_path, exporter=cfg.exporter)
    held_out = splits.take(ds, "nonmember_eval").texts[: cfg.parity_rows]
    parity = check_parity(model, tokenizer, onnx_path, hf_dir, held_out, max_length=cfg.max_length)
    _log(
        f"ONNX parity on {parity.rows} held-out rows: max |logit diff| {parity.max_abs_diff:.2e},"
        f" identical argmax {parity.argmax_equal}"
    )
    parity.check()
    digest = sha256_file(onnx_path)

    write_common_tokens(hf_dir, members.texts, max_length=cfg.max_length)  # before any signature
    calib_m, calib_n = splits.take(ds, "member_calib"), splits.take(ds, "nonmember_calib")

    def score(texts: list[str]) -> np.ndarray:
        return onnx_logits(onnx_path, hf_dir, names, list(texts), max_length=cfg.max_length, progress=cfg.progress)

    # Every training text once: the member index's side of the map; member_calib is its tail.
    zt = score(members.texts)
    zm = zt[len(members) - len(calib_m) :]
    zn = score(calib_n.texts)
    # The partial-match map's rows: the defender's own crops of training texts and of calibration non-members.
    crops_m, of_m = defender_crops(list(members.texts), seed=cfg.seed, limit=cfg.crop_texts)
    crops_n, of_n = defender_crops(list(calib_n.texts), seed=cfg.seed, limit=cfg.crop_texts)
    crop_rows = CropRows(
        member_logits=score(crops_m),
        member_labels=np.asarray(members.labels)[of_m],
        member_signatures=text_signatures(hf_dir, names, crops_m, max_length=cfg.max_length),
        nonmember_logits=score(crops_n),
        nonmember_labels=np.asarray(calib_n.labels)[of_n],
    )
    # The near-copy map's rows: the defender's own word edits of training texts and of calibration non-members.
    edits_m, ed_m = defender_edits(list(members.texts), seed=cfg.seed, limit=cfg.edit_texts)
    edits_n, ed_n = defender_edits(list(calib_n.texts), seed=cfg.seed, limit=cfg.edit_texts)
    edit_sig, edit_seq = text_fingerprints(hf_dir, names, edits_m, max_length=cfg.max_length)
    edit_rows = EditRows(
        member_logits=score(edits_m),
        member_labels=np.asarray(members.labels)[ed_m],
        member_signatures=edit_sig,
        member_sequences=edit_seq,
        nonmember_logits=score(edits_n),
        nonmember_labels=np.asarray(calib_n.labels)[ed_n],
    )
    index_sig, index_seq = text_fingerprints(hf_dir, names, members.texts, max_length=cfg.max_length)
    leave_out = None
    if cfg.leave_out and trainer is None:
        leave_out = leave_out_rows(cfg, members, list(calib_n.texts), key=train_key, num_labels=ds.num_classes)
    artifact = calibrate(
        member_logits=zm,
        member_labels=calib_m.labels,
        nonmember_logits=zn,
        nonmember_labels=calib_n.labels,
        classifier_sha256=digest,
        label_names=ds.label_names,
        index_signatures=index_sig,
        index_sequences=index_seq,
        edits=edit_rows,
        leave_out=leave_out,
        index_labels=members.labels,
        index_logits=zt,
        crops=crop_rows,
        calibration_signatures=text_signatures(hf_dir, names, calib_n.texts, max_length=cfg.max_length),
        config=CalibrationConfig(slack=cfg.slack, seed=cfg.seed),
        progress=cfg.progress,
    )
    if leave_out is not None:
        artifact.part_models = export_parts(
            folder=layout.leave_out,
            directory=layout.defense,
            parts=cfg.leave_out,
            tokenizer_dir=hf_dir,
            parity_texts=held_out,
            max_length=cfg.max_length,
            exporter=cfg.exporter,
            log=_log,
        )
    artifact.save(layout.defense)
    m = artifact.metrics
    _log(
        f"calibrated on {len(zm)}+{len(zn)} rows: risk AUC {m['risk_auc_holdout']:.3f} (rows early stopping never saw),"
        f" tau {[round(t, 4) for t in artifact.tau]} (untouched share {m['untouched_share']:.2f}),"
        f" perturbed {m['perturbed_share']:.1%}, eps {artifact.eps:.2f},"
        f" slack met {m['slack_met']}"
    )
    sel = artifact.selective.metrics
    part = sel.get("partial")
    _log(
        f"selective defense: {len(members)} training texts indexed; intensity floor {sel['floor']:.2f}"
        f" ({sel['levels']} confidence levels per class; {sel['rule']}; met {sel['slack_met']}); "
        + (
            f"partial-match map on {part['member_crops_matched']} matched crops of training texts"
            f" and {part['nonmember_crops']} of calibration non-members"
            if part
            else "no partial-match map"
        )
        + (
            f"; near-copy map on {near['member_edits_near']} matched edits of training texts that are not copies"
            f" and {near['nonmember_edits']} of calibration non-members"
            if (near := sel.get("near"))
            else "; no near-copy map"
        )
        + (
            f"; whole matches answered by {lo['parts']} leave-out part models"
            f" (their accuracy on the texts they left out {lo['held_out_accuracy']:.1%})"
            if (lo := sel.get("leave_out"))
            else "; copies through the whole-match map"
        )
    )

    opts = ServingOptions(
        input_names=tuple(names),
        num_classes=ds.num_classes,
        label_names=tuple(ds.label_names),
        classifier_sha256=digest,
        max_length=cfg.max_length,
        variants=tuple(cfg.variants),
        mode=cfg.mode,
        max_batch_size=cfg.max_batch_size,
    )
    roots = write_repository(
        layout.repository,
        opts=opts,
        onnx_path=onnx_path,
        tokenizer_dir=hf_dir,
        defense_dir=layout.defense,
    )
    summary = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "splits": {k: len(v) for k, v in splits.indices.items()},
        "train": asdict(report),
        "parity": asdict(parity),
        "classifier_sha256": digest,
        "calibration": {k: v for k, v in m.items() if k != "candidates"},
        "repositories": {k: str(v) for k, v in roots.items()},
        "seconds": time.perf_counter() - t0,
    }
    layout.summary_file.write_text(json.dumps(summary, indent=2, default=str))
    _log(f"model repository in {layout.repository} ({summary['seconds']:.0f}s in all)")
    return summary


def load_splits(out_dir: str | Path) -> Splits:
    return BuildDir(out_dir).splits()


def parse_args(argv: Sequence[str] | None = None) -> BuildConfig:
    d = BuildConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=d.dataset, help="sst2, agnews, a .tsv/.csv/.jsonl file, or hf:<id>")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder holding sst2/ and agnews/ (default: $VEIL_DATA_DIR or ../shared/data)",
    )
    p.add_argument("--model", default=d.model, help="minilm, tiny-bert, ..., or a Hugging Face id / path")
    p.add_argument("--out", default=None, help="output folder (default build/<dataset>-<model>)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--members", type=int, default=d.members)
    p.add_argument("--nonmembers", type=int, default=d.nonmembers)
    p.add_argument(
        "--calibration-nonmembers", type=int, default=None, help="defender's calibration non-members (default: half)"
    )
    p.add_argument("--attacker", type=int, default=d.attacker)
    p.add_argument(
        "--crop-texts", type=int, default=d.crop_texts, help="texts per side cropped for the partial-match map"
    )
    p.add_argument("--edit-texts", type=int, default=d.edit_texts, help="texts per side edited for the near-copy map")
    p.add_argument(
        "--leave-out",
        type=int,
        default=d.leave_out,
        help="leave-out part models answering whole matches of training texts (default 0: none; docs/defense.md)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default=d.exporter)
    p.add_argument("--variants", default="veil", help=f"comma-separated, from {','.join(REGISTRY)}")
    p.add_argument(
        "--mode",
        choices=("benchmark", "production"),
        default=d.mode,
        help="production leaves out the raw ensemble",
    )
    p.add_argument("--slack", type=float, default=d.slack)
    p.add_argument("--resume", action="store_true", help="reuse a model fine-tuned earlier with the same settings")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    variants = tuple(v.strip() for v in a.variants.split(",") if v.strip())
    bad = [v for v in variants if v not in REGISTRY or v == "none"]
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {[v for v in REGISTRY if v != 'none']}")
    return BuildConfig(
        dataset=a.dataset,
        data_dir=a.data_dir,
        model=a.model,
        out=a.out,
        seed=a.seed,
        members=a.members,
        nonmembers=a.nonmembers,
        calibration_nonmembers=a.calibration_nonmembers,
        attacker=a.attacker,
        crop_texts=a.crop_texts,
        edit_texts=a.edit_texts,
        leave_out=a.leave_out,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.batch_size,
        max_length=a.max_length,
        exporter=a.exporter,
        variants=variants,
        mode=a.mode,
        slack=a.slack,
        progress=not a.quiet,
        resume=a.resume,
    )


def main(argv: Sequence[str] | None = None) -> int:
    build(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
