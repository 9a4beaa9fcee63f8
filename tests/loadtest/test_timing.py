"""The timing probe's bookkeeping (the probe itself needs a served build: docs/evaluation.md)."""

from __future__ import annotations

import numpy as np
import pytest

from veil.loadtest.timing import interleave, timing_summary


def test_interleave_alternates_and_cuts_to_the_shorter_side():
    texts, member = interleave(["m0", "m1", "m2"], ["n0", "n1"])
    assert texts == ["m0", "n0", "m1", "n1"] and member.tolist() == [True, False, True, False]


@pytest.mark.parametrize("warmup", [0, 2, 6])
def test_summary_reads_slower_members_and_nothing_when_equal(warmup):
    _, member = interleave([f"m{i}" for i in range(50)], [f"n{i}" for i in range(50)])
    rng = np.random.default_rng(0)
    cycle = member[(warmup + np.arange(300)) % len(member)]
    slow = (0.010 + 0.004 * cycle + 0.001 * rng.random(300)).tolist()
    same = (0.010 + 0.001 * rng.random(300)).tolist()
    s = timing_summary({"slow": slow, "same": same}, member, warmup=warmup)
    assert s["slow"]["latency_auc"] > 0.99 and s["slow"]["member_over_nonmember"] > 1.3
    assert abs(s["same"]["latency_auc"] - 0.5) < 0.1 and abs(s["same"]["member_over_nonmember"] - 1) < 0.05
    # Misaligned bookkeeping (the wrong warm-up) would read the slow model as fast.
    if warmup:
        wrong = timing_summary({"slow": slow}, member, warmup=warmup + 1)
        assert wrong["slow"]["latency_auc"] < 0.01
