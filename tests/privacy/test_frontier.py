"""Pareto marking and per-seed formatting."""

from __future__ import annotations

from veil.privacy.frontier import pareto
from veil.privacy.summary import fmt


def test_pareto_marks_only_undominated_points():
    pts = [
        {"name": "a", "excess": 0.00, "error_detection_auroc": 0.50},
        {"name": "b", "excess": 0.01, "error_detection_auroc": 0.60},
        {"name": "c", "excess": 0.02, "error_detection_auroc": 0.55},  # dominated by b
        {"name": "d", "excess": 0.03, "error_detection_auroc": 0.76},
    ]
    assert pareto(pts, "error_detection_auroc", True) == {"a", "b", "d"}
    ece = [dict(p, ece=1 - p["error_detection_auroc"]) for p in pts]
    assert pareto(ece, "ece", False) == {"a", "b", "d"}
    broken = [*pts, {"name": "e", "excess": -0.05, "error_detection_auroc": 0.9, "accuracy": 0.5}]
    assert pareto([dict(p, accuracy=0.9) for p in pts] + broken[-1:], "error_detection_auroc", True) == {"a", "b", "d"}


def test_fmt_shows_every_seed():
    assert fmt([0.5]) == "50.0"
    assert fmt([0.5, 0.6, 0.7]) == "60.0 ± 10.0 (50.0, 60.0, 70.0)"
    assert fmt([None]) == "n/a"
    assert fmt([199, 7], pct=False, digits=0) == "103 ± 136 (199, 7)"
