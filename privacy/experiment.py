"""The privacy evaluation: train targets and attacker models, serve every defense, attack through Triton.

Per dataset, an attacker pool (fixed across seeds) trains K reference models on seeded halves;
reference 0 is also the shadow model. Per report seed (never the development seed), a target is
fine-tuned on fresh members drawn outside the pool, calibrated on its own calibration rows, and
served with every defense variant side by side. Evaluation rows are queried only through the
served ensembles (query attacks under several client-id modes); the attacker's shadow/reference
outputs go through the *same served defense step*. Baselines are exact functions of the raw
served output (:mod:`baselines`); DP-SGD targets are served without a defense. Every defense is
then measured by :func:`assess.assess` (attacks at both strengths, utility).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import time
from dataclasses import asdict

import numpy as np
import torch

from veil.export.data import dedupe, fingerprint, load_dataset
from veil.loadtest.timing import latency_attack
from veil.model_repository.spec import RAW, ensemble_name
from veil.model_repository.writer import rewrite_repository
from veil.privacy import level_reading
from veil.privacy.assess import QueryView, View, assess
from veil.privacy.attacks import Outputs, loss_score, phi
from veil.privacy.baselines import FEW_KNOBS, KNOBS, baselines, class_precision
from veil.privacy.models import (
    ADAPTIVE,
    EvalConfig,
    ReferenceModels,
    attacker_pool,
    build_dp,
    build_target,
    console,
    dp_learning_rates,
    quick,
    splits_for_seed,
)
from veil.privacy.query import MODES, SPEEDS, classify, defend_logits
from veil.privacy.query_attacks import augmentation_features, expand, repeat_features
from veil.privacy.utility import utility
from veil.serving.launcher import TritonServer, repositories_for

__all__ = ["EvalConfig", "evaluate", "quick", "reassess", "saved_results"]
MAIN_MODE = "long_lived/full"
VIEWS_FILE = "views.pkl"
ALL_MODES = [f"{m}/{s}" for s in SPEEDS for m in MODES]
OFFLINE = "veil.python_backend.offline"
VEIL_KNOBS = (None, 0.0, 1 / 6, 1 / 3, 1 / 2, 2 / 3, 5 / 6, 1.0)
"""Veil's intensity level (None: the calibrated floor): 64, 32, ..., 1 confidence levels per class."""


def _stratified_cap(member: np.ndarray, cap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m, n = np.flatnonzero(member), np.flatnonzero(~member)
    return np.sort(np.r_[rng.permutation(m)[:cap], rng.permutation(n)[:cap]])


def _with_phi(probs: np.ndarray, labels: np.ndarray, refs: list[np.ndarray], out: np.ndarray | None = None) -> Outputs:
    o = Outputs(probs, labels)
    if refs:
        ref = np.stack([phi(Outputs(p, labels)) for p in refs], 1)
        o.extra["ref_phi"] = np.where(out, ref, np.nan) if out is not None else ref
    return o


class Side:
    """Everything one defense produced on one side (target or attacker), as float32 arrays."""

    def __init__(self, probs, refs, aug: dict[str, np.ndarray], rep: dict[str, np.ndarray]) -> None:
        self.probs, self.refs, self.aug, self.rep = probs, refs, aug, rep

    def map(self, f) -> Side:
        """A baseline of these outputs: query attacks in the main mode only (a deterministic function
        of the raw output does not depend on the client id)."""
        aug = {k: f(v) for k, v in self.aug.items() if k == MAIN_MODE}
        return Side(f(self.probs), [f(r) for r in self.refs], aug, {k: f(v) for k, v in self.rep.items() if k in aug})


def evaluate_seed(cfg: EvalConfig, ds, refs: ReferenceModels, seed: int, *, dp_lr: dict[float, float]) -> dict:
    t0 = time.perf_counter()
    splits = splits_for_seed(cfg, ds, refs.pool, seed)
    seed_dir = cfg.root / f"seed{seed}"
    console().print(f"[bold]seed {seed}[/bold]: target on {len(splits.members)} members")
    target_build = build_target(cfg, splits, seed, seed_dir / "target")

    members, nonmembers = splits.take(ds, "member_eval"), splits.take(ds, "nonmember_eval")
    texts = members.texts + nonmembers.texts
    labels = np.r_[members.labels, nonmembers.labels]
    member = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    calib = splits.take(ds, "nonmember_calib")
    sh_texts, sh_labels, sh_member = refs.shadow()
    k_refs = cfg.references
    lira = k_refs >= 2
    sh_out = refs.out_mask(refs.pool, first=1) if lira else None

    # attacker logits (its own models), and the query-attack rows
    sh_logits = refs.logits(0, sh_texts)
    sh_ref_logits = [refs.logits(k, sh_texts) for k in range(1, k_refs)]
    tg_ref_logits = [refs.logits(k, texts) for k in range(k_refs)]
    q_idx = _stratified_cap(member, cfg.query_rows, seed + 1)
    sq_idx = _stratified_cap(sh_member, cfg.query_rows, seed + 2)
    aug_texts, aug_group = expand([texts[i] for i in q_idx], cfg.edits, seed)
    rep_texts = [texts[i] for i in q_idx for _ in range(cfg.repeats)]
    rep_group = np.repeat(np.arange(len(q_idx)), cfg.repeats)
    sh_aug_texts = expand([sh_texts[i] for i in sq_idx], cfg.edits, seed)[0]
    sh_aug_logits = refs.logits(0, sh_aug_texts)
    benign = [sh_texts[i] for i in np.setdiff1d(np.arange(len(sh_texts)), sq_idx)]

    served_names = ("none", *cfg.variants)
    target: dict[str, Side] = {}
    attacker: dict[str, Side] = {}
    benign_out: dict[str, np.ndarray] = {}
    log = seed_dir / "target" / "tritonserver.log"
    with TritonServer(_eval_repository(cfg, seed_dir / "target"), log_file=log) as server:
        url = server.http_url
        calib_raw = classify(url, RAW, calib.texts, tag="calibration")
        for v in served_names:
            model = RAW if v == "none" else ensemble_name(v)
            every_mode = v in cfg.query_variants
            # Only an adaptive variant is queried in each mode; any other returns the same bytes in
            # every mode (a function of the raw output alone), so its main-mode answers stand for all.
            modes = ALL_MODES if every_mode and v in ADAPTIVE else [MAIN_MODE]
            aug, rep = {}, {}
            for ms in modes:
                mode, speed = ms.split("/")
                kw = {"mode": mode, "speed": speed, "tag": f"eval-{v}", "benign": benign}
                aug[ms] = classify(url, model, aug_texts, group=aug_group, seed=seed, **kw)
                rep[ms] = classify(url, model, rep_texts, group=rep_group, seed=seed + 1, **kw)
            if every_mode and v not in ADAPTIVE:
                aug, rep = dict.fromkeys(ALL_MODES, aug[MAIN_MODE]), dict.fromkeys(ALL_MODES, rep[MAIN_MODE])
            probs = classify(url, model, texts, tag=f"eval-{v}", seed=seed)
            target[v] = Side(probs, [], aug, rep)
            if every_mode:  # benign traffic: distinct rows, paced (adaptive intensity idle)
                benign_out[v] = (
                    classify(url, model, texts, speed="paced", tag=f"benign-{v}", seed=seed, benign=benign)
                    if v in ADAPTIVE
                    else probs
                )
            dv = None if v == "none" else v

            def sim(z: np.ndarray, dv=dv, v=v) -> np.ndarray:
                return defend_logits(url, dv, z, client_id=f"sim-{v}", seed=seed)

            target[v].refs = [sim(z) for z in tg_ref_logits]
            attacker[v] = Side(sim(sh_logits), [sim(z) for z in sh_ref_logits], {MAIN_MODE: sim(sh_aug_logits)}, {})
        console().print(f"  served defenses queried in {time.perf_counter() - t0:.0f}s")
        timing = {}
        if cfg.timing_rows:  # latency as a membership score, every served model against veil_raw
            models = [RAW if v == "none" else ensemble_name(v) for v in served_names]
            r = cfg.timing_rows
            by_model = latency_attack(
                server.grpc_url, models, members.texts[:r], nonmembers.texts[:r], repeats=cfg.timing_repeats
            )
            timing = {v: by_model[m] for v, m in zip(served_names, models, strict=True)}

    def query_views(t: Side, a: Side) -> dict[str, QueryView]:
        out = {}
        shadow_q = Outputs(a.probs[sq_idx], sh_labels[sq_idx])
        shadow_q.extra = augmentation_features(a.aug[MAIN_MODE], sh_labels[sq_idx], cfg.edits)
        shadow_q.extra |= repeat_features(np.repeat(a.probs[sq_idx], cfg.repeats, 0), sh_labels[sq_idx], cfg.repeats)[0]
        for ms in t.aug:
            tq = Outputs(t.probs[q_idx], labels[q_idx])
            tq.extra = augmentation_features(t.aug[ms], labels[q_idx], cfg.edits)
            rep, differ = repeat_features(t.rep[ms], labels[q_idx], cfg.repeats)
            tq.extra |= rep
            out[ms] = QueryView(tq, member[q_idx], shadow_q, sh_member[sq_idx], differ)
        return out

    def view(name: str, family: str, knob, source: str, t: Side, a: Side) -> View:
        return View(
            name,
            family,
            knob,
            source,
            _with_phi(t.probs, labels, t.refs),
            _with_phi(a.probs, sh_labels, a.refs, sh_out),
            query_views(t, a),
        )

    raw = target["none"].probs
    views = [view(v, v, None, "served", target[v], attacker[v]) for v in served_names]
    precision = class_precision(calib_raw, calib.labels, ds.num_classes)
    for b in baselines(ds.num_classes, precision, FEW_KNOBS if cfg.few_knobs else KNOBS):
        views.append(
            view(
                b.name, b.family, b.knob, "baseline", target["none"].map(b.transform), attacker["none"].map(b.transform)
            )
        )
    tx = {"target": texts, "aug": aug_texts, "rep": rep_texts}
    views += _veil_offline(cfg, seed_dir / "target", tx, target["none"], attacker["none"], view)
    views += _dp_views(cfg, splits, seed, seed_dir, tx, target["none"], attacker["none"], view, dp_lr)

    for v in views:
        v.target.texts, v.shadow.texts = texts, sh_texts
    measured = {"views": views, "member": member, "shadow_member": sh_member, "raw": raw, "lira": lira}
    measured |= {"benign": benign_out, "labels": labels}
    # Every output the attacks read, so a revised instrument can re-assess without re-querying.
    with open(seed_dir / VIEWS_FILE, "wb") as fh:
        pickle.dump(measured, fh)
    results = _assess_all(cfg, seed, **measured)
    level = level_reading.from_views(measured)
    roc = {v.name: {"loss": loss_score(v.target).tolist()} for v in views if v.source in ("served", "dp")}
    console().print(f"  seed {seed}: {len(views)} defenses measured in {time.perf_counter() - t0:.0f}s")
    return {
        "seed": seed,
        "is_member": member.tolist(),
        "train_accuracy": target_build["train"]["train_accuracy"],
        "calibration": target_build["calibration"],
        "calibration_precision": precision.tolist(),
        "defenses": results,
        "crossfit_splits": cfg.crossfit_splits,
        "roc": roc,
        "timing": timing,
        "level_reading": level,
        "seconds": time.perf_counter() - t0,
    }


def _eval_repository(cfg: EvalConfig, build_dir):
    """The build's repository as the evaluation serves it: the same models and defense, the
    classifier sessions with ``cfg.classifier_threads`` intra-op threads (the evaluation sends one
    request at a time, so one thread would leave the other cores idle). Thread count changes no
    output: the served outputs are checked for determinism on repeats."""
    out = rewrite_repository(build_dir, build_dir / "eval_repository", classifier_threads=cfg.classifier_threads)
    return repositories_for(out)


def _assess_all(cfg: EvalConfig, seed: int, *, views, member, shadow_member, raw, lira, benign, labels) -> dict:
    results = {}
    none = next((v for v in views if v.name == "none"), None)
    if lira and none is not None:  # the attacker's reference models' own (raw) outputs, for the label-only LiRA
        for v in views:
            v.target.extra["ref_phi_raw"] = none.target.extra["ref_phi"]
            v.shadow.extra["ref_phi_raw"] = none.shadow.extra["ref_phi"]
    for v in views:
        blind = v.name == "none"  # the split check: text features only
        results[v.name] = assess(
            v,
            member,
            shadow_member,
            raw=raw,
            lira=lira,
            seed=seed,
            boots=cfg.bootstrap,
            splits=cfg.crossfit_splits,
            blind=blind,
        )
        if v.name in benign:
            b, ref = benign[v.name][~member], benign.get("none", raw)[~member]
            results[v.name]["utility_benign"] = utility(b, labels[~member], ref)
    return results


def reassess(cfg: EvalConfig) -> None:
    """Re-run every attack and utility measure on the outputs a finished seed saved (its
    ``views.pkl``), rewriting that seed's ``result.json``: no model is trained or queried."""
    for seed in cfg.seeds:
        seed_dir = cfg.root / f"seed{seed}"
        with open(seed_dir / VIEWS_FILE, "rb") as fh:
            measured = pickle.load(fh)  # our own file, written by evaluate_seed
        t0 = time.perf_counter()
        result = json.loads((seed_dir / "result.json").read_text())
        result["defenses"] = _assess_all(cfg, seed, **measured)
        result["level_reading"] = level_reading.from_views(measured)
        result["crossfit_splits"] = cfg.crossfit_splits
        (seed_dir / "result.json").write_text(json.dumps(result))
        console().print(f"  seed {seed}: re-assessed in {time.perf_counter() - t0:.0f}s")


def _veil_offline(cfg, build_dir, tx: dict[str, list[str]], raw_t: Side, raw_a: Side, view) -> list[View]:
    """Veil's knob sweep through the lead's offline entry point, if it exists (no stand-in). The
    logits handed to it are log(raw served probabilities): softmax-equivalent to the model's.

    Only the target's own queries carry their texts (the served tokenizer fingerprints them). Every
    output the attacker simulates with its own models (the target rows' reference outputs, the
    shadow side) is defended *ungated*, as the served step defends logits sent without a
    fingerprint: the attacker never learns the defender's member index through them.
    """
    if importlib.util.find_spec(OFFLINE) is None:
        console().print(f"  note: {OFFLINE} not found; Veil's knob sweep skipped (the served 'veil' row stays)")
        return []
    defend = importlib.import_module(OFFLINE).defend
    tiny = np.finfo(np.float64).tiny
    out = []
    for knob in VEIL_KNOBS:

        def f(p: np.ndarray, texts: list[str] | None, knob=knob) -> np.ndarray:
            z = np.log(np.maximum(np.asarray(p, np.float64), tiny))
            gated = texts is not None
            return np.asarray(defend(build_dir, texts or [], z, knob=knob, gated=gated), np.float32)

        t = Side(
            f(raw_t.probs, tx["target"]),
            [f(r, None) for r in raw_t.refs],
            {MAIN_MODE: f(raw_t.aug[MAIN_MODE], tx["aug"])},
            {MAIN_MODE: f(raw_t.rep[MAIN_MODE], tx["rep"])},
        )
        a = Side(
            f(raw_a.probs, None),
            [f(r, None) for r in raw_a.refs],
            {MAIN_MODE: f(raw_a.aug[MAIN_MODE], None)},
            {},
        )
        name = "veil_offline" if knob is None else f"veil_offline_{knob:g}"
        out.append(view(name, "veil_offline", knob, "offline", t, a))
    return out


def _dp_views(
    cfg, splits, seed, seed_dir, tx: dict[str, list[str]], raw_t: Side, raw_a: Side, view, dp_lr: dict[float, float]
) -> list[View]:
    """DP-SGD targets, served without a defense; the attacker's shadow and reference outputs are
    its own models' plain softmax (as for the undefended target)."""
    views = []
    for eps in cfg.dp_epsilons:
        dp_dir = seed_dir / f"dp_eps{eps:g}"
        build_dp(cfg, splits, seed, eps, dp_dir, lr=dp_lr[eps])
        with TritonServer(_eval_repository(cfg, dp_dir), log_file=dp_dir / "tritonserver.log") as s:
            probs = classify(s.http_url, RAW, tx["target"], tag="eval-dp", seed=seed)
            aug = classify(s.http_url, RAW, tx["aug"], tag="eval-dp", seed=seed)
            rep = classify(s.http_url, RAW, tx["rep"], tag="eval-dp", seed=seed + 1)
        t = Side(probs, raw_t.refs, {MAIN_MODE: aug}, {MAIN_MODE: rep})
        views.append(view(f"dpsgd_eps{eps:g}", "dpsgd", eps, "dp", t, raw_a))
    return views


# --- one dataset -----------------------------------------------------------------------------------


def evaluate(cfg: EvalConfig) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    cfg.root.mkdir(parents=True, exist_ok=True)
    ds = dedupe(load_dataset(cfg.dataset, "train", data_dir=cfg.data_dir))
    pool = attacker_pool(ds, cfg.pool)
    dp_lr = dp_learning_rates(cfg, ds, pool)
    refs = ReferenceModels(cfg, ds, pool)
    seeds = []
    for seed in cfg.seeds:
        result = evaluate_seed(cfg, ds, refs, seed, dp_lr=dp_lr)
        seeds.append(result)
        (cfg.root / f"seed{seed}" / "result.json").write_text(json.dumps(result))
    return _dataset_result(cfg, ds, seeds, seconds=time.perf_counter() - t0, dp_lr=dp_lr)


def _dataset_result(cfg: EvalConfig, ds, seeds: list[dict], *, seconds: float | None, dp_lr: dict) -> dict:
    return {
        "name": cfg.name,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "num_classes": ds.num_classes,
        "dataset_rows": len(ds),
        "source_sha256": fingerprint(ds),
        "seeds": seeds,
        "seconds": seconds,
        "dp_lr": {f"{eps:g}": lr for eps, lr in dp_lr.items()},
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
    return _dataset_result(cfg, ds, seeds, seconds=None, dp_lr=dp_learning_rates(cfg, ds, None, train=False))
