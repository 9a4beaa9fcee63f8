"""The paced querying emulation: every id it attacks through is established (not young)."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from veil.privacy.query import _paced
from veil.python_backend.adaptive import AdaptiveConfig


class Recorder:
    """A stand-in for VeilClient that records when each id sent which rows."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, list[str]]] = []

    def infer(self, model: str, texts: list[str], *, client_id: str):
        self.calls.append((time.monotonic(), client_id, list(texts)))
        probs = np.tile(np.float32([0.25, 0.75]), (len(texts), 1))
        return type("Result", (), {"as_numpy": lambda self, name: probs})()


def test_paced_ids_are_past_young_when_attack_rows_go_and_edits_split_over_ids():
    cfg = AdaptiveConfig()
    texts = [f"text {g} edit {e}" for g in range(40) for e in range(3)]
    group = np.repeat(np.arange(40), 3)
    order = np.random.default_rng(0).permutation(len(texts))
    out = np.empty(len(texts), dtype=object)
    c = Recorder()
    _paced(c, "veil_defended", texts, order, out, tag="t", benign=[f"benign {k}" for k in range(500)], group=group)

    attack = set(texts)
    born: dict[str, float] = {}
    rows_before: dict[str, int] = defaultdict(int)
    sent_by: dict[str, set[str]] = defaultdict(set)
    attack_requests = 0
    for t, cid, rows in c.calls:
        born.setdefault(cid, t)
        if attack.intersection(rows):
            attack_requests += 1
            assert t - born[cid] >= cfg.young_s, (cid, t - born[cid])
            assert rows_before[cid] >= cfg.young_rows
            for r in rows:
                sent_by[r].add(cid)
        rows_before[cid] += len(rows)
    assert attack_requests and all(p is not None for p in out)
    # the three edits of one text went through three different ids
    for g in range(40):
        ids = [next(iter(sent_by[f"text {g} edit {e}"])) for e in range(3)]
        assert len(set(ids)) == 3, g
