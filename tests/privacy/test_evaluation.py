"""The ``--quick`` evaluation end to end on a tiny overfit model, through the real server."""

from __future__ import annotations

import json

import pytest

from veil.privacy.__main__ import main
from veil.privacy.models import VARIANTS

from ..conftest import synthetic_rows, write_tsv

pytestmark = pytest.mark.integration


def test_quick_evaluation(tmp_path):
    data = write_tsv(tmp_path / "data" / "reviews.tsv", synthetic_rows(2000, seed=4))
    args = ["--datasets", str(data), "--work-dir", str(tmp_path / "work"), "--quiet"]
    assert main([*args, "--quick", "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "privacy.md").read_text()
    summary = json.loads((tmp_path / "report" / "privacy.json").read_text())["reviews"]["summary"]

    # every served variant, every baseline family and DP-SGD are measured and reported
    for name in (*VARIANTS, "none", "dpsgd_eps8"):
        assert name in summary, name
    for family in ("clamp", "hamp", "temperature", "noise", "calibrated_label_only", "round_1dp"):
        assert any(r["family"] == family for r in summary.values()), family
    assert "development seed 7" in md and "Excess over label-only" in md
    assert (tmp_path / "report" / "frontier_reviews.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "roc_reviews_log.png").exists()

    # The instrument has teeth: the raw output leaks more than the label-only output under the
    # upper-bound attacker, and the report says so. (The tiny model leaks mostly through correctness,
    # which the label also carries; what the raw vector adds shows in the label-free confidence
    # attack, the loss score's AUC and its low-FPR TPR.)
    raw, ref = summary["none"]["upper_bound"], summary["label_only"]["upper_bound"]
    assert ref["per_attack"]["confidence"][0] == pytest.approx(0.5)  # one-hot: nothing without the label
    conf = raw["per_attack"]["confidence"][0] - 0.5
    auc = raw["per_attack_auc"]["loss"][0] - ref["per_attack_auc"]["loss"][0]
    tpr = raw["per_attack_tpr_1"]["loss"][0] - ref["per_attack_tpr_1"]["loss"][0]
    assert conf > 0.03 or auc > 0.03 or tpr > 0.03, (conf, auc, tpr)
    assert "Raw output vs label-only, upper bound" in md
    assert f"label-free confidence attack accuracy {100 * conf:.1f} pt" in md

    # Label-preserving defenses keep the accuracy; one-hot outputs rank no errors; raw outputs do.
    for name, r in summary.items():
        if r["source"] in ("served", "baseline"):
            assert r["model_accuracy"] == summary["none"]["model_accuracy"], name
    assert summary["label_only"]["utility"]["error_detection_auroc"][0] == pytest.approx(0.5)
    assert summary["none"]["utility"]["identical_to_raw"][0] == 1.0
    assert summary["label_only"]["utility"]["distinct_outputs"][0] <= 2
    # exact deterministic outputs: repeated identical queries to the raw endpoint agree bit for bit
    assert all(v == 0 for v in summary["none"]["nondeterministic"][0].values())
    # query attacks ran in every client-id mode and speed on the label-only output
    modes = {a.split(":")[0] for a in summary["label_only"]["upper_bound"]["per_attack"] if ":" in a}
    assert len(modes) == 6, modes

    # --report-only: the same tables again from the per-seed results the run saved.
    assert main([*args, "--quick", "--report-only", "--out", str(tmp_path / "report2")]) == 0
    again = json.loads((tmp_path / "report2" / "privacy.json").read_text())["reviews"]["summary"]
    assert again == summary
