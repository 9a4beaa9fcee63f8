"""The privacy evaluation: train targets and attacker models, serve every defense, attack through Triton.

Per dataset, an attacker pool (fixed across seeds) trains K reference models on seeded halves;
reference 0 is also the shadow model (its members: its half; its non-members: the other half).
Per seed, a target is fine-tuned on fresh members drawn outside the pool, calibrated on its own
calibration rows, and served with every defense variant side by side (benchmark mode). The
evaluation rows (member_eval, nonmember_eval) are queried only through the served ensembles, and
the attacker's shadow/reference outputs go through the *same served defense step* (mia_defense
called by name), as an attacker who knows the defense would simulate it. DP-SGD targets (trained
with Opacus on the same members) are served without a defense.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient
from rich.console import Console

from veil.client.triton import VeilClient
from veil.export.data import SPLIT_NAMES, Splits, TextDataset, dedupe, fingerprint, load_dataset, make_splits
from veil.export.dp import dp_fine_tune
from veil.export.pipeline import BuildConfig, build, split_sizes
from veil.export.train import fine_tune, load_model, predict_logits
from veil.model_repository.spec import RAW, defense_model_name, ensemble_name
from veil.privacy.attacks import Outputs, run_attacks
from veil.python_backend.defense import VARIANTS as ALL_VARIANTS
from veil.serving.launcher import TritonServer, repositories_for

VARIANTS = tuple(v for v in ALL_VARIANTS if v != "none")  # "none" is served as veil_raw
POOL_SEED = 10_000


@dataclass
class EvalConfig:
    dataset: str = "sst2"
    data_dir: str | None = None
    model: str = "minilm"
    work_dir: str = "build/privacy"
    seeds: tuple[int, ...] = (0, 1, 2)
    members: int = 1000
    nonmembers: int = 1000
    pool: int = 2000
    references: int = 4
    epochs: int = 8
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    dp_epsilons: tuple[float, ...] = (8.0, 1.0)
    dp_epochs: int = 8
    dp_lr: float = 0.05
    dp_train_layers: int = 1
    dp_batch_size: int = 64
    variants: tuple[str, ...] = VARIANTS
    slack: float = 0.005
    progress: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A file-name-safe name for the dataset (a path or hub id becomes its last part)."""
        path_like = "/" in self.dataset or "." in self.dataset
        base = Path(self.dataset.removeprefix("hf:")).stem if path_like else self.dataset
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in base)

    @property
    def root(self) -> Path:
        return Path(self.work_dir) / f"{self.name}-{self.model.replace('/', '_')}"


def _console() -> Console:
    return Console(stderr=True)


# --- attacker side ---------------------------------------------------------------------------------


class ReferenceModels:
    """K attacker models on seeded halves of the pool; logits cached per text."""

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
        _console().print(f"[bold]reference model {k + 1}/{self.cfg.references}[/bold] on {len(half)} pool rows")
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
        return np.stack([self.cache[k][t] for t in texts])

    def shadow(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Reference 0 as the shadow model: (pool texts, labels, is_member)."""
        texts = [self.ds.texts[i] for i in self.pool]
        return texts, self.ds.labels[self.pool], np.isin(self.pool, self.halves[0])


# --- serving ---------------------------------------------------------------------------------------


def defend_logits(
    server: TritonServer, variant: str | None, logits: np.ndarray, *, client_id: str, batch: int = 256, seed: int = 0
) -> np.ndarray:
    """Send the attacker's logits through the served defense step (``None``: the raw softmax step),
    in a seeded random order like :func:`classify`."""
    model = "softmax" if variant is None else defense_model_name(variant)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    order = np.random.default_rng(seed).permutation(len(logits))
    shuffled = logits[order]
    out = []
    try:
        for start in range(0, len(shuffled), batch):
            z = np.ascontiguousarray(shuffled[start : start + batch], dtype=np.float32)
            inp = httpclient.InferInput("logits", list(z.shape), "FP32")
            inp.set_data_from_numpy(z)
            out.append(client.infer(model, [inp], parameters={"veil-client-id": client_id}).as_numpy("probabilities"))
    finally:
        client.close()
    probs = np.concatenate(out)
    result = np.empty_like(probs)
    result[order] = probs
    return result


def classify(server: TritonServer, model: str, texts: list[str], *, client_id: str, seed: int = 0) -> np.ndarray:
    """Query in a seeded random order: an attacker does not know membership in advance, so the
    order must not correlate with it (adaptive intensity changes outputs as a client's state grows)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    with VeilClient(server.http_url, timeout=300) as c:
        probs = c.classify([texts[i] for i in order], model=model, client_id=client_id, batch_size=64)[0]
    out = np.empty_like(probs)
    out[order] = probs
    return out


# --- one seed --------------------------------------------------------------------------------------


def _splits_for_seed(cfg: EvalConfig, ds: TextDataset, pool: np.ndarray, seed: int) -> Splits:
    sizes = split_sizes(BuildConfig(members=cfg.members, nonmembers=cfg.nonmembers, attacker=0))
    splits = make_splits(ds, sizes=sizes, seed=seed, dataset_name=cfg.dataset, exclude=pool)
    splits.indices["attacker"] = sorted(int(i) for i in pool)
    splits.check()
    return splits


def _build_cfg(cfg: EvalConfig, seed: int, out: Path, variants: tuple[str, ...]) -> BuildConfig:
    return BuildConfig(
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        model=cfg.model,
        out=str(out),
        seed=seed,
        members=cfg.members,
        nonmembers=cfg.nonmembers,
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


def evaluate_seed(cfg: EvalConfig, ds: TextDataset, refs: ReferenceModels, seed: int) -> dict:
    console = _console()
    splits = _splits_for_seed(cfg, ds, refs.pool, seed)
    seed_dir = cfg.root / f"seed{seed}"
    console.print(f"[bold]seed {seed}[/bold]: target on {len(splits.members)} members")
    target_build = build(_build_cfg(cfg, seed, seed_dir / "target", cfg.variants), splits=splits)

    members, nonmembers = splits.take(ds, "member_eval"), splits.take(ds, "nonmember_eval")
    texts = members.texts + nonmembers.texts
    labels = np.r_[members.labels, nonmembers.labels]
    is_member = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    shadow_texts, shadow_labels, shadow_member = refs.shadow()
    shadow_logits = refs.logits(0, shadow_texts)
    ref_logits = [refs.logits(k, texts) for k in range(cfg.references)]

    results: dict[str, dict] = {}

    def attack(
        name: str,
        target_probs: np.ndarray,
        shadow_probs: np.ndarray,
        ref_probs: list[np.ndarray],
        extra: dict | None = None,
    ) -> None:
        target = Outputs(target_probs, labels, is_member)
        shadow = Outputs(shadow_probs, shadow_labels, shadow_member)
        ref_phi = np.stack([_phi(p, labels) for p in ref_probs]) if ref_probs else None
        found = run_attacks(
            target, shadow, reference_phi=ref_phi, target_texts=texts, shadow_texts=shadow_texts, seed=seed
        )
        results[name] = {
            "accuracy_heldout": float((target_probs[~is_member].argmax(1) == labels[~is_member]).mean()),
            "accuracy_members": float((target_probs[is_member].argmax(1) == labels[is_member]).mean()),
            "floor": target.floor(),
            "mean_confidence": float(target_probs.max(1).mean()),
            "attacks": {r.name: r.row() for r in found},
            "scores": {r.name: r.scores.tolist() for r in found},
            "slices": _slices(target, found),
            **(extra or {}),
        }

    log = seed_dir / "target" / "tritonserver.log"
    with TritonServer(repositories_for(seed_dir / "target" / "model_repository"), log_file=log) as server:
        t = time.perf_counter()
        raw = classify(server, RAW, texts, client_id="evaluator-raw")
        attack(
            "none",
            raw,
            defend_logits(server, None, shadow_logits, client_id="sim-none"),
            [defend_logits(server, None, z, client_id="sim-none") for z in ref_logits],
        )
        for variant in cfg.variants:
            probs = classify(server, ensemble_name(variant), texts, client_id=f"evaluator-{variant}")
            sim = f"sim-{variant}"
            attack(
                variant,
                probs,
                defend_logits(server, variant, shadow_logits, client_id=sim),
                [defend_logits(server, variant, z, client_id=sim) for z in ref_logits],
            )
        console.print(f"  served defenses queried and attacked in {time.perf_counter() - t:.0f}s")

    for eps in cfg.dp_epsilons:
        dp_dir = seed_dir / f"dp_eps{eps:g}"
        trainer = partial(
            dp_fine_tune,
            target_epsilon=eps,
            epochs=cfg.dp_epochs,
            lr=cfg.dp_lr,
            batch_size=cfg.dp_batch_size,
            max_length=cfg.max_length,
            train_layers=cfg.dp_train_layers,
            seed=seed,
            progress=cfg.progress,
        )
        trainer.key = (
            f"dp-sgd eps={eps} epochs={cfg.dp_epochs} sgd-momentum lr={cfg.dp_lr} batch={cfg.dp_batch_size} "
            f"layers={cfg.dp_train_layers}"
        )
        dp_build = build(_build_cfg(cfg, seed, dp_dir, ("veil",)), splits=splits, trainer=trainer)
        with TritonServer(repositories_for(dp_dir / "model_repository"), log_file=dp_dir / "tritonserver.log") as s:
            probs = classify(s, RAW, texts, client_id="evaluator-dp")
            # A DP model needs no defense step; the attacker's shadow/reference outputs are plain softmax.
            attack(
                f"dpsgd_eps{eps:g}",
                probs,
                defend_logits(s, None, shadow_logits, client_id="sim-dp"),
                [defend_logits(s, None, z, client_id="sim-dp") for z in ref_logits],
                extra={"dp": dp_build["train"].get("extra", {})},
            )
    return {
        "seed": seed,
        "is_member": is_member.tolist(),
        "train_accuracy": target_build["train"]["train_accuracy"],
        "calibration": target_build["calibration"],
        "defenses": results,
    }


def _phi(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(probs[np.arange(len(labels)), labels].astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _slices(target: Outputs, found) -> dict:
    """Best-threshold accuracy of each score attack within slices (per class; correct vs wrong)."""
    from veil.python_backend.leakage import best_threshold_accuracy

    out: dict[str, dict[str, float]] = {}
    slices = {f"class_{c}": target.labels == c for c in np.unique(target.labels)}
    slices |= {"correct": target.correct, "wrong": ~target.correct}
    for name, sel in slices.items():
        out[name] = {"rows": int(sel.sum()), "members": int(target.is_member[sel].sum())}
        for r in found:
            if r.name in ("gap", "blind"):
                continue
            out[name][r.name] = best_threshold_accuracy(r.scores[sel], target.is_member[sel])
    return out


# --- one dataset -----------------------------------------------------------------------------------


def evaluate(cfg: EvalConfig) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    cfg.root.mkdir(parents=True, exist_ok=True)
    ds = dedupe(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir))
    pool_sizes = dict.fromkeys(SPLIT_NAMES, 0) | {"attacker": cfg.pool}
    pool = np.asarray(make_splits(ds, sizes=pool_sizes, seed=POOL_SEED).indices["attacker"])
    refs = ReferenceModels(cfg, ds, pool)
    seeds = []
    for seed in cfg.seeds:
        result = evaluate_seed(cfg, ds, refs, seed)
        seeds.append(result)
        (cfg.root / f"seed{seed}" / "result.json").write_text(json.dumps(result))
    return _dataset_result(cfg, ds, seeds, seconds=time.perf_counter() - t0)


def _dataset_result(cfg: EvalConfig, ds: TextDataset, seeds: list[dict], *, seconds: float | None) -> dict:
    return {
        "name": cfg.name,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "dataset_rows": len(ds),
        "source_sha256": fingerprint(ds),
        "seeds": seeds,
        "seconds": seconds,
    }


def saved_results(cfg: EvalConfig) -> dict:
    """What :func:`evaluate` returns, rebuilt from the per-seed results an earlier run saved (to
    re-render a report, or to report the seeds a long run has finished). Wall time is not known."""
    seeds = []
    for seed in cfg.seeds:
        path = cfg.root / f"seed{seed}" / "result.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: evaluate seed {seed} first (without --report-only)")
        seeds.append(json.loads(path.read_text()))
    ds = dedupe(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir))
    return _dataset_result(cfg, ds, seeds, seconds=None)


def quick(cfg: EvalConfig) -> EvalConfig:
    """CI-sized settings (tiny model, few rows, one seed)."""
    return replace(
        cfg,
        model="tiny-bert",
        seeds=(0,),
        members=160,
        nonmembers=160,
        pool=200,
        references=2,
        epochs=10,
        lr=2e-3,
        batch_size=16,
        max_length=32,
        dp_epsilons=(8.0,),
        dp_epochs=2,
        dp_batch_size=32,
        dp_lr=0.05,
    )
