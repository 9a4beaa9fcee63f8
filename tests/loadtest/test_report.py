"""The report's settings, arithmetic and rendering on synthetic rounds (no server, no gevent)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from veil.loadtest.config import RunConfig, plan
from veil.loadtest.report import to_markdown, write_reports
from veil.loadtest.results import RoundResult, summarize

COMPOSING = {
    "veil_undefended": ["tokenizer", "classifier_softmax"],
    "veil_raw": ["tokenizer", "classifier", "softmax"],
    "veil_defended": ["tokenizer", "mia_defense"],
}


def stats(requests: int, infer_us: float) -> dict[str, dict[str, int]]:
    def entry(n: int, us: float) -> dict[str, int]:
        e = {"executions": n, "inferences": n}
        for name in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
            e[f"{name}_count"] = n
            e[f"{name}_ns"] = int(n * us * 1e3 / (1 if name in ("success", "compute_infer") else 10))
        e["fail_count"] = e["fail_ns"] = 0
        return e

    names = {*COMPOSING, *(m for steps in COMPOSING.values() for m in steps)}
    return {m: entry(requests, infer_us) for m in names}


def fake_round(protocol: str, users: int, model: str, index: int, p50_ms: float, n: int = 200) -> RoundResult:
    rng = np.random.default_rng(index + users)
    lat = rng.normal(p50_ms * 1e3, p50_ms * 50, n).clip(1)
    seconds = n * p50_ms / 1e3 / users  # closed loop: throughput = users / latency
    return RoundResult(protocol, users, model, index, seconds, lat, 0, [], n, 0, stats(n, 500), 0.3, 1.2)


@pytest.fixture
def report(tmp_path) -> dict:
    cfg = RunConfig(build_dir=str(tmp_path), grpc_users=(1, 2, 4), http_users=(1,), rounds=2)
    rounds = []
    for protocol, users, r, model in plan(cfg):
        base = 3.0 * max(1, users / 2)  # the references saturate from 2 users
        rounds.append(fake_round(protocol, users, model, r, base * (1.04 if model == "veil_defended" else 1.0)))
    return summarize(cfg, rounds, COMPOSING)


def test_plan_alternates_forwards_and_backwards_per_user_count():
    cfg = RunConfig(grpc_users=(1, 8), http_users=(), rounds=2)
    models = ["veil_undefended", "veil_raw", "veil_defended"]
    assert [m for p, u, r, m in plan(cfg) if u == 8] == models + models[::-1]
    assert {p for p, *_ in plan(cfg)} == {"grpc"}
    # without a baseline (an older build), the raw ensemble is the only reference
    assert RunConfig(baseline="").models == ("veil_raw", "veil_defended")


def test_ratios_and_summary_points(report):
    grpc = report["summary"]["grpc"]
    assert grpc["concurrency_1"]["users"] == 1 and grpc["saturation"]["users"] == 4
    assert grpc["knee_users"] in (1, 2)
    assert [c["reference"] for c in report["comparisons"]] == ["veil_undefended", "veil_raw"]
    assert [c["goals"] for c in report["comparisons"]] == [True, False]
    assert report["ratios"] == report["comparisons"][0]["ratios"]
    for comp in report["comparisons"]:
        for r in comp["ratios"]:
            assert r["reference"] == comp["reference"]
            assert r["p50"] == pytest.approx(1.04, rel=0.02)
            assert r["throughput"] == pytest.approx(1 / 1.04, rel=0.02)
            # same server CPU share per wall second, 1/1.04 the requests: 1.04 the CPU per request
            assert r["server_cpu_per_request"] == pytest.approx(1.04, rel=0.02)
            assert len(r["round_p50"]) == 2
    for a in report["attribution"]:  # identical synthetic steps: no extra cost, no noise
        assert a["extra_us"] == pytest.approx(0) and a["shared_compute_ratio"] == pytest.approx(1)
    split = report["levels"][0]["server"]
    assert split["ensemble"]["server_us"] == pytest.approx(500, rel=0.01)
    assert split["models"]["tokenizer"]["avg_batch"] == 1.0


def test_reports_are_written_and_readable(report, tmp_path):
    paths = write_reports(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["ratios"] == json.loads(json.dumps(report["ratios"]))
    md = paths["markdown"].read_text()
    assert "| grpc | saturation | 4 |" in md and "| http | concurrency 1 | 1 |" in md
    assert "1.040 met" in md  # p50 ratio against the 1.05 goal
    assert "### veil_defended against veil_undefended: the goals" in md
    assert "### veil_defended against veil_raw: for reference" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_quick_defaults_are_small():
    cfg = RunConfig.quick_defaults(build_dir="b")
    assert cfg.quick and cfg.max_requests and cfg.rounds == 1 and not cfg.perf_analyzer
    assert cfg.output_dir().name == "loadtest-quick"


def test_optional_sections_appear_only_when_there_is_something_to_say(report):
    md = to_markdown(report)
    assert "## Errors" not in md and "Defense during the run" not in md
    assert md.count("\n\n\n") == 0  # an empty section leaves no extra blank line
    first, *rest = report["levels"]
    report = {**report, "errors": 1, "levels": [{**first, "error_examples": ["Timeout: 60 s"]}, *rest]}
    report["meta"] = {
        **report["meta"],
        "defense_model": "mia_defense",
        "defense_counters": {"veil_outputs_total": 10.0, "veil_outputs_perturbed_total": 4.0},
    }
    report["perf_analyzer"] = {
        "status": "1 of 2 runs failed",
        "runs": [
            {"model": "veil_raw", "concurrency": 1, "Inferences/Second": 300.0, "p50 latency": 2500},
            {"model": "veil_defended", "concurrency": 1, "error": "no such model"},
        ],
    }
    # an older report.json: one comparison (against veil_raw) at the top level, attribution re-derived
    md = to_markdown({**report, "comparisons": None, "attribution": None})
    assert "## Errors: 1" in md and "Timeout: 60 s" in md
    assert "10 outputs, 40.0% perturbed" in md
    assert "| veil_raw | 1 | 300.0 | 2.50 |" in md and "error: no such model" in md
    assert "| mia_defense µs | classifier+softmax µs |" in md
