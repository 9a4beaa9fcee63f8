"""Querying the real server: texts through served ensembles under several client-id modes, and the
attacker's own logits through the served defense step.

Client-id modes (the request parameter :data:`veil.wire.CLIENT_ID_KEY`):

- ``long_lived``: one id for the whole run;
- ``fresh``: a new id on every request;
- ``anonymous``: no id at all.

Speeds: ``full`` sends as fast as the server answers; ``paced`` stays below the adaptive-intensity
thresholds. Real pacing (< 20 rows/s per id, near-duplicate share < 10%) is too slow for this
machine, so it is *emulated*: the queries are spread over many long-lived ids (each warmed up with
benign distinct rows until it is no longer "young"), ids created slowly (below the churn
threshold), small requests sent round-robin, and the edits of one text sent through different ids,
so each id's row rate and near-duplicate share stay low. This is an emulation, and the report says so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import tritonclient.http as httpclient

from veil.client.triton import VeilClient
from veil.model_repository.spec import defense_model_name
from veil.python_backend.adaptive import AdaptiveConfig
from veil.wire import CLIENT_ID_KEY

MODES = ("long_lived", "fresh", "anonymous")
SPEEDS = ("full", "paced")
PACED_ROWS_PER_ID = 48
PACED_BATCH = 4
PACED_MARGIN_S = 0.5
"""Extra wait past ``young_s`` (the server's clock starts an id when its first request arrives)."""


def defend_logits(url: str, variant: str | None, logits: np.ndarray, *, client_id: str, seed: int = 0) -> np.ndarray:
    """The attacker's logits through the served defense step (``None``: the raw softmax step), in a
    seeded random order (an attacker does not know membership in advance)."""
    model = "softmax" if variant is None else defense_model_name(variant)
    client = httpclient.InferenceServerClient(url, network_timeout=300)
    order = np.random.default_rng(seed).permutation(len(logits))
    shuffled = logits[order]
    out = []
    try:
        for start in range(0, len(shuffled), 256):
            z = np.ascontiguousarray(shuffled[start : start + 256], dtype=np.float32)
            inp = httpclient.InferInput("logits", list(z.shape), "FP32")
            inp.set_data_from_numpy(z)
            out.append(client.infer(model, [inp], parameters={CLIENT_ID_KEY: client_id}).as_numpy("probabilities"))
    finally:
        client.close()
    probs = np.concatenate(out) if out else np.zeros((0, logits.shape[1]), np.float32)
    result = np.empty_like(probs)
    result[order] = probs
    return result


def classify(
    url: str,
    model: str,
    texts: Sequence[str],
    *,
    mode: str = "long_lived",
    speed: str = "full",
    tag: str = "evaluator",
    seed: int = 0,
    benign: Sequence[str] = (),
    group: np.ndarray | None = None,
) -> np.ndarray:
    """Probabilities for ``texts`` (in their order), queried in a seeded random order under a client-id
    mode and speed. ``group``: rows sharing a group (edits of one text) go through different ids when
    paced; ``benign``: distinct texts for warming up paced ids."""
    if mode not in MODES or speed not in SPEEDS:
        raise ValueError(f"mode {mode!r} / speed {speed!r}")
    order = np.random.default_rng(seed).permutation(len(texts))
    out = np.empty((len(texts),), dtype=object)
    with VeilClient(url, timeout=300) as c:
        if speed == "full":
            run = uuid.uuid4().hex[:8]
            batch = 64
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                cid = {"long_lived": f"{tag}-{run}", "fresh": f"{tag}-{uuid.uuid4().hex}", "anonymous": None}[mode]
                res = c.infer(model, [texts[i] for i in idx], client_id=cid)
                for i, p in zip(idx, res.as_numpy("probabilities"), strict=True):
                    out[i] = p
        else:
            _paced(c, model, texts, order, out, tag=tag, benign=benign, group=group)
    return np.stack(list(out)).astype(np.float32)


def _paced(c: VeilClient, model: str, texts, order, out, *, tag: str, benign, group) -> None:
    cfg = AdaptiveConfig()
    n_ids = max(2, int(np.ceil(len(order) / PACED_ROWS_PER_ID)))
    ids = [f"{tag}-paced-{uuid.uuid4().hex[:8]}-{k}" for k in range(n_ids)]
    benign = list(benign) or [f"a plain sentence number {k}" for k in range(cfg.young_rows)]
    gap = 1.0 / (0.8 * cfg.churn_low)  # new ids below the churn threshold
    for k, cid in enumerate(ids):  # warm-up: each id sends distinct benign rows until it is not young
        rows = [benign[(k * cfg.young_rows + j) % len(benign)] for j in range(cfg.young_rows)]
        last_born = time.monotonic()
        c.infer(model, rows[: len(rows) // 2], client_id=cid)
        c.infer(model, rows[len(rows) // 2 :], client_id=cid)
        time.sleep(gap)
    # Every id, the last-born included, must be older than young_s before the first attack row
    # (until 2026-12-03 this waited young_s after the *first* id: later ids were still young).
    time.sleep(max(0.0, cfg.young_s + PACED_MARGIN_S - (time.monotonic() - last_born)))
    # Rows of one group go to consecutive ids from where the group first appears: different ids
    # for up to n_ids rows of a group, and the groups' start positions spread the load.
    queues: list[list[int]] = [[] for _ in ids]
    slot: dict[int, int] = {}  # group -> the id its next row goes to
    for pos, i in enumerate(order):
        g = pos if group is None else int(group[i])
        k = slot.get(g, pos)
        slot[g] = k + 1
        queues[k % n_ids].append(int(i))
    while any(queues):
        for k, q in enumerate(queues):
            if not q:
                continue
            idx, queues[k] = q[:PACED_BATCH], q[PACED_BATCH:]
            res = c.infer(model, [texts[i] for i in idx], client_id=ids[k])
            for i, p in zip(idx, res.as_numpy("probabilities"), strict=True):
                out[i] = p
