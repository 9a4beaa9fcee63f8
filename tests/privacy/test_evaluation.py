"""A small end-to-end privacy evaluation through the real server, with the tiny model."""

from __future__ import annotations

import json

import pytest

from veil.privacy.experiment import EvalConfig, evaluate, quick, saved_results
from veil.privacy.report import write_report

from ..conftest import synthetic_rows, write_tsv

pytestmark = pytest.mark.integration


def test_quick_evaluation_writes_tables_and_plots(tmp_path):
    data = write_tsv(tmp_path / "data" / "reviews.tsv", synthetic_rows(1000, seed=4))
    cfg = quick(EvalConfig(dataset=str(data), work_dir=str(tmp_path / "work"), progress=False))
    result = evaluate(cfg)
    path = write_report({cfg.name: result}, tmp_path / "report", command="test")
    md = path.read_text()
    for row in (
        "No defense",
        "Veil",
        "Top-1 label only",
        "MemGuard-style",
        "DP-SGD, epsilon 8",
        "Veil, fixed intensity",
        "Random noise",
        "Temperature scaling only",
    ):
        assert f"| {row}" in md, row
    assert (tmp_path / "report" / "roc_reviews.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "roc_reviews_log.png").exists()
    summary = json.loads((tmp_path / "report" / "privacy.json").read_text())["reviews"]["summary"]
    # Label-preserving defenses keep the accuracy exactly; the label-only output sits on the floor.
    for name in ("veil", "fixed_intensity", "perturb_all", "random_noise", "temperature", "memguard", "label_only"):
        assert summary[name]["model_accuracy"] == summary["none"]["model_accuracy"], name
    assert summary["label_only"]["gap_accuracy"] == summary["label_only"]["floor"]
    # Temperature scaling is monotone: threshold attacks see exactly the same ranking.
    assert summary["temperature"]["auc"] == summary["none"]["auc"]

    # --report-only: the same tables again from the per-seed results the run saved.
    again = saved_results(cfg)
    assert again["seeds"] == json.loads(json.dumps(result["seeds"]))
    path2 = write_report({cfg.name: again}, tmp_path / "report2", command="test")
    assert "wall time not recorded" in path2.read_text()
    assert json.loads((tmp_path / "report2" / "privacy.json").read_text())["reviews"]["summary"] == summary
