"""The replay instrument on the tiny build: every defense and baseline measured, tables and plot written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from veil.privacy import replay

pytestmark = pytest.mark.integration  # uses the session's tiny build (trained and exported)


def test_replay_measures_every_output_and_writes_the_report(tiny_build, tmp_path, monkeypatch):
    monkeypatch.setattr(replay, "BOOTSTRAP", 5)
    assert replay.main(["--builds", str(tiny_build), "--out", str(tmp_path)]) == 0
    dataset = json.loads((tiny_build / "build.json").read_text())["config"]["dataset"]
    name = replay.BuildDir(tiny_build).summary()["config"]["dataset"]
    assert name == dataset
    results = json.loads(next(tmp_path.glob("replay_*.json")).read_text())
    rows = results[0]["defenses"]
    assert {"none", "label_only", "veil", "levelset", "calibrated_label_only"} <= set(rows)
    assert rows["label_only"]["excess"] == 0.0
    # Level 1 is calibrated label-only: one vector per class, no more than the label's privacy.
    assert rows["veil_level_1.00"]["utility"]["distinct_outputs"] <= 2
    assert rows["veil_level_1.00"]["excess"] <= 0.02
    # The ladder is monotone in what it shows: fewer distinct outputs at higher levels.
    distinct = [rows[f"veil_level_{q:.2f}"]["utility"]["distinct_outputs"] for q in replay.LEVELS]
    assert distinct == sorted(distinct, reverse=True)
    assert all(np.isfinite(r["utility"]["ece"]) for r in rows.values())
    md = next(tmp_path.glob("replay_*.md")).read_text()
    assert "| veil |" in md and "excess over label-only" in md
    assert next(tmp_path.glob("frontier_*.png")).stat().st_size > 10_000
