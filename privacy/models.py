"""Configuration and model training for the evaluation: targets (via the export pipeline), the
attacker's reference models on a fixed pool, DP-SGD targets.

The variant list is imported here and nowhere else in ``veil.privacy`` (one line to switch to the
``veil.python_backend.variants`` registry).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console

from veil.export.crops import DEFENDER_TEXTS
from veil.export.data import SPLIT_NAMES, Splits, TextDataset, make_splits
from veil.export.dp import dp_fine_tune
from veil.export.pipeline import BuildConfig, build, split_sizes
from veil.export.train import fine_tune, load_model, predict_logits
from veil.privacy.metrics import CROSSFIT_SPLITS
from veil.python_backend.variants import REGISTRY, SERVED  # the one import of the variant list

VARIANTS = SERVED  # "none" is served as veil_raw
ADAPTIVE = frozenset(v for v in SERVED if REGISTRY[v].adaptive)
"""Variants whose output depends on the caller (client id, query pattern); every other variant's
output is a function of the raw output alone, the same bytes in every client-id mode and speed."""
POOL_SEED = 10_000
DEV_SEED = 7
"""The development seed: any tuning (DP learning rate, knob defaults) happens on it; never reported."""


@dataclass
class EvalConfig:
    dataset: str = "sst2"
    data_dir: str | None = None
    model: str = "minilm"
    work_dir: str = "build/privacy"
    seeds: tuple[int, ...] = (11, 12, 13)
    """Report seeds: fresh (no design choice or tuning ever read their evaluation rows)."""
    dev_seed: int = DEV_SEED
    members: int = 1000
    nonmembers: int = 1000
    calibration_nonmembers: int | None = 3000
    """The defender's own held-out rows for calibration (None: half of ``nonmembers``); never
    evaluation rows. The selective map and its confidences are as exact as this is large."""
    pool: int = 2000
    references: int = 8
    epochs: int = 8
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    dp_epsilons: tuple[float, ...] = (8.0, 1.0)
    dp_epochs: int = 8
    dp_lr: float = 0.05
    """Used only where ``dp_lr_grid`` is empty."""
    dp_lr_grid: tuple[float, ...] = (0.02, 0.05, 0.2)
    """Learning rates tried per epsilon on the development seed; the one with the best accuracy on
    that seed's calibration non-members serves every report seed (:func:`dp_learning_rates`)."""
    dp_train_layers: int = 1
    dp_batch_size: int = 64
    variants: tuple[str, ...] = VARIANTS
    slack: float = 0.005
    query_rows: int = 300
    """Rows per side (members, non-members) for query attacks."""
    edits: int = 6
    repeats: int = 3
    timing_rows: int = 200
    """Timing attack: training texts and non-members per side, each sent ``timing_repeats`` times
    to every served model, one row a request (:func:`veil.loadtest.timing.latency_attack`); 0: off."""
    timing_repeats: int = 3
    query_variants: tuple[str, ...] = ("none", "label_only", "veil")
    """Served outputs attacked in every client-id mode and speed; the others in long_lived/full only."""
    bootstrap: int = 200
    crossfit_splits: int = CROSSFIT_SPLITS
    """Random halvings the upper-bound attacker is cross-fitted over (averaged)."""
    classifier_threads: int = 0
    """onnxruntime intra-op threads of the served classifier sessions during the evaluation (0: one
    per core); deployments default to 1 (docs/load-testing.md)."""
    few_knobs: bool = False
    """A CI-sized baseline sweep (two clamp values, one of each other knob)."""
    crop_texts: int = DEFENDER_TEXTS
    """Texts per side the defender crops for the partial-match map (``veil-build --crop-texts``)."""
    edit_texts: int = DEFENDER_TEXTS
    """Texts per side the defender edits for the near-copy map (``veil-build --edit-texts``)."""
    leave_out: int = 0
    """Leave-out part models of each target's build (``veil-build --leave-out``; off as served)."""
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dev_seed in self.seeds:
            raise ValueError(f"the development seed {self.dev_seed} must not be a report seed")

    @property
    def name(self) -> str:
        """A file-name-safe name for the dataset (a path or hub id becomes its last part)."""
        path_like = "/" in self.dataset or "." in self.dataset
        base = Path(self.dataset.removeprefix("hf:")).stem if path_like else self.dataset
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in base)

    @property
    def root(self) -> Path:
        return Path(self.work_dir) / f"{self.name}-{self.model.replace('/', '_')}"


def quick(cfg: EvalConfig) -> EvalConfig:
    """CI-sized settings (tiny model, few rows, one seed)."""
    return replace(
        cfg,
        model="tiny-bert",
        seeds=(11,),
        members=400,
        nonmembers=400,
        calibration_nonmembers=None,
        pool=400,
        references=2,
        epochs=20,
        lr=2e-3,
        batch_size=16,
        max_length=32,
        dp_epsilons=(8.0,),
        dp_epochs=2,
        dp_batch_size=32,
        dp_lr=0.05,
        dp_lr_grid=(0.05, 0.2),
        query_rows=60,
        bootstrap=50,
        crossfit_splits=2,
        few_knobs=True,
        crop_texts=100,
        edit_texts=100,
        timing_rows=40,
        timing_repeats=2,
    )


def console() -> Console:
    return Console(stderr=True)


def attacker_pool(ds: TextDataset, size: int) -> np.ndarray:
    sizes = dict.fromkeys(SPLIT_NAMES, 0) | {"attacker": size}
    return np.asarray(make_splits(ds, sizes=sizes, seed=POOL_SEED).indices["attacker"])


class ReferenceModels:
    """K attacker models on seeded halves of the pool; logits cached per text. Reference 0 is also
    the shadow model (members: its half of the pool; non-members: the other half)."""

    def __init__(self, cfg: EvalConfig, ds: TextDataset, pool: np.ndarray) -> None:
        self.cfg, self.ds, self.pool = cfg, ds, np.asarray(pool)
        self.halves: list[np.ndarray] = []
        self.models = []
        self.cache: list[dict[str, np.ndarray]] = []
        for k in range(cfg.references):
            rng = np.random.default_rng(POOL_SEED + 1 + k)
            half = np.sort(rng.permutation(self.pool)[: len(self.pool) // 2])
            self.halves.append(half)
            self.models.append(self._train_or_load(k, half))
            self.cache.append({})

    def _train_or_load(self, k: int, half: np.ndarray):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = self.cfg.root / "references" / f"ref{k}"
        stamp = folder / "trained.json"
        expected = {"rows": half.tolist(), "epochs": self.cfg.epochs, "lr": self.cfg.lr, "model": self.cfg.model}
        if stamp.exists() and json.loads(stamp.read_text()) == expected:
            model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
            return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)
        console().print(f"[bold]reference model {k + 1}/{self.cfg.references}[/bold] on {len(half)} pool rows")
        model, tok = load_model(self.cfg.model, num_labels=self.ds.num_classes, seed=POOL_SEED + k)
        fine_tune(
            model,
            tok,
            self.ds.subset(half),
            epochs=self.cfg.epochs,
            lr=self.cfg.lr,
            batch_size=self.cfg.batch_size,
            max_length=self.cfg.max_length,
            seed=POOL_SEED + k,
            progress=self.cfg.progress,
        )
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        stamp.write_text(json.dumps(expected))
        return model.eval(), tok

    def logits(self, k: int, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache[k]]
        if missing:
            model, tok = self.models[k]
            for t, z in zip(missing, predict_logits(model, tok, missing, max_length=self.cfg.max_length), strict=True):
                self.cache[k][t] = z
        return np.stack([self.cache[k][t] for t in texts]) if texts else np.zeros((0, self.ds.num_classes))

    def shadow(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Reference 0 as the shadow model: (pool texts, labels, is_member)."""
        texts = [self.ds.texts[i] for i in self.pool]
        return texts, self.ds.labels[self.pool], np.isin(self.pool, self.halves[0])

    def out_mask(self, rows: np.ndarray, first: int = 0) -> np.ndarray:
        """[N, K - first]: True where reference k (k >= first) did not train on the pool row."""
        return np.stack([~np.isin(rows, self.halves[k]) for k in range(first, self.cfg.references)], 1)


def splits_for_seed(cfg: EvalConfig, ds: TextDataset, pool: np.ndarray, seed: int) -> Splits:
    sizes = split_sizes(
        BuildConfig(
            members=cfg.members,
            nonmembers=cfg.nonmembers,
            calibration_nonmembers=cfg.calibration_nonmembers,
            attacker=0,
        )
    )
    splits = make_splits(ds, sizes=sizes, seed=seed, dataset_name=cfg.dataset, exclude=pool)
    splits.indices["attacker"] = sorted(int(i) for i in pool)
    splits.check()
    return splits


def build_cfg(cfg: EvalConfig, seed: int, out: Path, variants: tuple[str, ...]) -> BuildConfig:
    return BuildConfig(
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        model=cfg.model,
        out=str(out),
        seed=seed,
        members=cfg.members,
        nonmembers=cfg.nonmembers,
        calibration_nonmembers=cfg.calibration_nonmembers,
        crop_texts=cfg.crop_texts,
        edit_texts=cfg.edit_texts,
        leave_out=cfg.leave_out,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        variants=variants,
        mode="benchmark",
        slack=cfg.slack,
        progress=cfg.progress,
        resume=True,
    )


def build_target(cfg: EvalConfig, splits: Splits, seed: int, out: Path) -> dict:
    return build(build_cfg(cfg, seed, out, cfg.variants), splits=splits)


def dp_learning_rates(
    cfg: EvalConfig, ds: TextDataset, pool: np.ndarray | None, *, train: bool = True
) -> dict[float, float]:
    """The DP-SGD learning rate per epsilon, tuned on the development seed only: for each rate in
    ``cfg.dp_lr_grid``, a DP model is trained on that seed's members and scored on its calibration
    non-members (rows no report seed reads); the most accurate rate wins (the smaller on ties).
    Cached in ``<root>/dev/dp_lr.json`` with the settings it depends on; ``train=False`` only reads
    that cache (empty when there is none: a report re-rendered from a run that did not tune)."""
    if not cfg.dp_lr_grid or not cfg.dp_epsilons:
        return dict.fromkeys(cfg.dp_epsilons, cfg.dp_lr)
    cache = cfg.root / "dev" / "dp_lr.json"
    key = {
        "seed": cfg.dev_seed,
        "grid": list(cfg.dp_lr_grid),
        "epsilons": list(cfg.dp_epsilons),
        "epochs": cfg.dp_epochs,
        "batch": cfg.dp_batch_size,
        "layers": cfg.dp_train_layers,
        "members": cfg.members,
        "model": cfg.model,
    }
    if cache.is_file() and (saved := json.loads(cache.read_text()))["key"] == key:
        return {float(e): lr for e, lr in saved["chosen"].items()}
    if not train:
        return {}
    splits = splits_for_seed(cfg, ds, pool, cfg.dev_seed)
    members, calib = splits.take(ds, "members"), splits.take(ds, "nonmember_calib")
    accuracy: dict[str, dict[str, float]] = {}
    for eps in cfg.dp_epsilons:
        accuracy[f"{eps:g}"] = {}
        for lr in cfg.dp_lr_grid:
            console().print(f"[bold]DP-SGD learning rate[/bold] eps={eps:g} lr={lr:g} (dev seed {cfg.dev_seed})")
            model, tok = load_model(cfg.model, num_labels=ds.num_classes, seed=cfg.dev_seed)
            dp_trainer(cfg, eps=eps, lr=lr, seed=cfg.dev_seed)(model, tok, members)
            z = predict_logits(model, tok, calib.texts, max_length=cfg.max_length)
            accuracy[f"{eps:g}"][f"{lr:g}"] = float((z.argmax(1) == calib.labels).mean())
    chosen = {e: float(max(sorted(cfg.dp_lr_grid), key=lambda lr: acc[f"{lr:g}"])) for e, acc in accuracy.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accuracy": accuracy, "chosen": chosen}, indent=1))
    return {float(e): lr for e, lr in chosen.items()}


def dp_trainer(cfg: EvalConfig, *, eps: float, lr: float, seed: int) -> partial:
    """``trainer(model, tokenizer, data)``: DP-SGD (Opacus) with the evaluation's settings."""
    return partial(
        dp_fine_tune,
        target_epsilon=eps,
        epochs=cfg.dp_epochs,
        lr=lr,
        batch_size=cfg.dp_batch_size,
        max_length=cfg.max_length,
        train_layers=cfg.dp_train_layers,
        seed=seed,
        progress=cfg.progress,
    )


def build_dp(cfg: EvalConfig, splits: Splits, seed: int, eps: float, out: Path, *, lr: float) -> dict:
    """A DP-SGD target (Opacus) on the same members, served without a defense step, at the
    learning rate :func:`dp_learning_rates` chose for ``eps`` on the development seed."""
    trainer = dp_trainer(cfg, eps=eps, lr=lr, seed=seed)
    trainer.key = (
        f"dp-sgd eps={eps} epochs={cfg.dp_epochs} sgd-momentum lr={lr} batch={cfg.dp_batch_size} "
        f"layers={cfg.dp_train_layers}"
    )
    return build(build_cfg(cfg, seed, out, ("veil",)), splits=splits, trainer=trainer)
