"""The served defense step replayed in-process on a build's artifact (frontier sweeps, benches).

The same :class:`~veil.python_backend.defense.Defense` the Triton adapter runs, fed the same
inputs (logits and the tokenizer's signatures and sequence hashes), so the probabilities are exactly what the served
step returns for those rows at that threat level; the evaluation still queries the served
endpoint for its reported operating points.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from veil.export.build_dir import BuildDir
from veil.python_backend.artifact import META_FILE, DefenseArtifact, part_model_file
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import NO_SEQUENCE, SIGNATURE_SIZE
from veil.python_backend.tokens import text_fingerprints

_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, make):
    """Artifacts and signatures are reused across calls (a knob sweep replays the same rows)."""
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = make()
    return _CACHE[key]


def defend(
    build_dir: str | Path,
    texts: list[str],
    logits: np.ndarray,
    *,
    knob: float | None = None,
    threat: float | np.ndarray = 0.0,
    variant: str = "veil",
    gated: bool = True,
) -> np.ndarray:
    """[N, C] float32 probabilities. ``knob``: Veil's intensity level in [0, 1] for every row
    (None: the calibrated floor and ``threat`` as the caller's threat, one for all rows or one per
    row). ``gated=False``: the rows
    carry no text signature, as the served step sees logits sent without a fingerprint (an
    attacker's own model outputs): the member gate never fires on them."""
    build = BuildDir(build_dir)
    options = build.options()
    # Keyed on the artifact's modification time, so a recalibrated build is never served stale.
    stamp = (build.defense / META_FILE).stat().st_mtime_ns
    art = _cached(("artifact", str(build.defense), stamp), lambda: DefenseArtifact.load(build.defense))
    texts = list(texts)
    if gated:
        sig, seq = _cached(
            ("fingerprints", str(build.hf), hash(tuple(texts))),
            lambda: text_fingerprints(build.hf, list(options.input_names), texts, max_length=options.max_length),
        )
    else:  # what the adapter fills in for a request without a fingerprint
        sig = np.full((len(logits), SIGNATURE_SIZE), -1, np.int32)
        seq = np.full(len(logits), NO_SEQUENCE, np.int64)
    defense = Defense(art, config=DefenseConfig(variant=variant, intensity=knob))
    return defense(
        np.asarray(logits, dtype=np.float32),
        threat=np.broadcast_to(np.asarray(threat, dtype=np.float64), (len(logits),)).copy(),
        signatures=sig,
        sequences=seq,
        held_out=_cached(
            ("held_out", str(build.defense), stamp, hash(tuple(texts))), partial(held_out_on_texts, build, texts)
        )
        if gated and art.part_models
        else None,
    ).probabilities


def held_out_on_texts(build: BuildDir, texts: list[str]):
    """:data:`~veil.python_backend.selective.HeldOut` for rows given as texts: the build's leave-out
    part models (ONNX, beside its artifact) on the asked texts, tokenized as the served tokenizer
    does; each (part, row) scored once (a knob sweep replays the same rows). A row with no part
    (-1: no whole match, its answer discarded) is NaN: offline, no clock to equalise."""
    from veil.export.pipeline import onnx_logits

    options = build.options()
    done: dict[tuple[int, int], np.ndarray] = {}

    def held_out(rows: np.ndarray, parts: np.ndarray) -> np.ndarray:
        for k in np.unique(parts[parts >= 0]):
            todo = [int(r) for r in rows[parts == k] if (int(k), int(r)) not in done]
            if todo:
                z = onnx_logits(
                    part_model_file(build.defense, int(k)),
                    build.hf,
                    list(options.input_names),
                    [texts[r] for r in todo],
                    max_length=options.max_length,
                )
                done.update({(int(k), r): row for r, row in zip(todo, z, strict=True)})
        nan = np.full(options.num_classes, np.nan, np.float32)
        return np.array(
            [done[int(k), int(r)] if k >= 0 else nan for r, k in zip(rows, parts, strict=True)], np.float32
        ).reshape(len(rows), options.num_classes)

    return held_out
