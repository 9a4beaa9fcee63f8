"""The defense bench's cache-effect mode on the tiny build: three CPU timings of the served step."""

from __future__ import annotations

import math


def test_cache_effect_times_the_served_step_three_ways(tiny_build):
    from veil.loadtest.defense_bench import cache_effect

    ms = cache_effect(tiny_build, repeats=5)
    assert list(ms) == ["warm", "after_classifier", "after_sleep"]
    assert all(math.isfinite(v) and v > 0 for v in ms.values())
