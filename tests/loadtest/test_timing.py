"""The timing probe's bookkeeping (the probe itself needs a served build: docs/evaluation.md)."""

from __future__ import annotations

import numpy as np
import pytest

from veil.loadtest.timing import interleave, timing_summary


def test_interleave_balances_the_order_and_cuts_to_the_shorter_side():
    texts, member = interleave(["m0", "m1", "m2"], ["n0", "n1"])
    assert texts == ["m0", "n0", "n1", "m1"] and member.tolist() == [True, False, False, True]
    _, member = interleave([f"m{i}" for i in range(50)], [f"n{i}" for i in range(50)])
    # ab.run sends even-numbered texts to the models in one order and odd ones in the other: each
    # side must be first as often as second, or the order is read as membership.
    first = np.arange(len(member)) % 2 == 0
    assert (member & first).sum() == (member & ~first).sum() == (~member & first).sum() == 25


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
    # Misaligned bookkeeping (a warm-up off by two: the blocks of four read backwards) would read
    # the slow model as fast, and off by one would read nothing.
    wrong = timing_summary({"slow": slow}, member, warmup=warmup + 2)
    assert wrong["slow"]["latency_auc"] < 0.01
    assert abs(timing_summary({"slow": slow}, member, warmup=warmup + 1)["slow"]["latency_auc"] - 0.5) < 0.1


def test_repeats_average_a_small_gap_into_view():
    """A gap far below one request's noise reads near chance per request, and clearly once each
    text's median over its repeats is taken (the attack a repeated query makes)."""
    _, member = interleave([f"m{i}" for i in range(100)], [f"n{i}" for i in range(100)])
    rng = np.random.default_rng(1)
    k = 15
    cycle = np.tile(member, k)
    times = (0.010 + 0.0001 * cycle + 0.001 * rng.random(len(cycle))).tolist()
    s = timing_summary({"m": times}, member, warmup=0)["m"]
    assert s["repeats"] == k
    assert s["latency_auc"] < 0.65 < s["median_of_repeats_auc"]
    assert "repeats" not in timing_summary({"m": times[: len(member)]}, member, warmup=0)["m"]
