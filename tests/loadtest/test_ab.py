"""The paired A/B client against the tiny build's server: every model answered, ratios well-formed."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration


def test_paired_requests_against_the_three_ensembles(server):
    from veil.loadtest import ab

    models = ["veil_undefended", "veil_raw", "veil_defended"]
    times = ab.run(server.grpc_url, models, ["a good film", "the plot was awful"], requests=12, warmup=2)
    assert {m: len(t) for m, t in times.items()} == dict.fromkeys(models, 12)
    summary = ab.summarize(times)
    assert summary["veil_undefended"]["ratio"]["p50"] == pytest.approx(1.0)
    assert summary["veil_undefended"]["paired_median_ratio"] == pytest.approx(1.0)
    for s in summary.values():
        assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
        assert all(math.isfinite(v) and v > 0 for v in s["ratio"].values())
    md = ab.to_markdown(summary, note="")
    assert md.count("\n| veil_") == 3 and "ratios against veil_undefended" in md
