"""``VeilClient.classify``'s batching and pacing, without a server (the integration tests serve it)."""

from __future__ import annotations

import numpy as np
import pytest

import veil.client.triton as triton_client
from veil import wire
from veil.client.triton import VeilClient


class _Result:
    def __init__(self, n: int) -> None:
        self.n = n

    def as_numpy(self, name: str) -> np.ndarray:
        if name == wire.PROBABILITIES:
            return np.full((self.n, 2), 0.5, np.float32)
        return np.zeros((self.n, 1), np.int64)


@pytest.mark.parametrize(("pace", "expected"), [(0.0, []), (4.0, [2.0, 2.0])])
def test_classify_waits_pace_round_trips_between_requests(monkeypatch, pace, expected):
    """Three requests of 0.5 s each: pace 4 waits 2 s after each but the last; 0 never waits."""
    now = [0.0]
    slept: list[float] = []
    monkeypatch.setattr(triton_client.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(triton_client.time, "sleep", lambda s: slept.append(s) or now.__setitem__(0, now[0] + s))
    client = VeilClient.__new__(VeilClient)  # no connection: infer is replaced below
    sent = []

    def infer(model, texts, *, client_id=None):
        sent.append(len(texts))
        now[0] += 0.5
        return _Result(len(texts))

    client.infer = infer
    probs, labels = client.classify([f"t{k}" for k in range(5)], batch_size=2, pace=pace)
    assert sent == [2, 2, 1] and probs.shape == (5, 2) and labels.shape == (5,)
    assert slept == pytest.approx(expected)
