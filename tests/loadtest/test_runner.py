"""The runner end to end on the tiny build: requests succeed and the reports are well-formed.

No timing assertions: speed is the runner's report, not a test.
"""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_reports(out, *, protocols: set[str]) -> dict:
    report = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert (out / "latency_vs_concurrency.png").read_bytes()[:8] == PNG_MAGIC
    assert report["errors"] == 0
    assert {e["protocol"] for e in report["levels"]} == protocols
    for e in report["levels"]:
        assert e["requests"] > 0 and e["errors"] == 0, e
        assert e["locust_failures"] == 0
        for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps"):
            assert math.isfinite(e[key]) and e[key] > 0
        assert e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"]
        models = e["server"]["models"]
        assert "tokenizer" in models
        last = {"veil_defended": "mia_defense", "veil_raw": "softmax", "veil_undefended": "classifier_softmax"}
        assert last[e["model"]] in models
        assert e["server"]["ensemble"]["requests"] >= e["requests"]
    for r in report["ratios"]:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("p50", "p95", "p99", "throughput"))
    assert {e["model"] for e in report["levels"]} == {"veil_undefended", "veil_raw", "veil_defended"}
    assert [c["reference"] for c in report["comparisons"]] == ["veil_undefended", "veil_raw"]
    for protocol in protocols:
        assert {"concurrency_1", "saturation", "peak_throughput_rps"} <= set(report["summary"][protocol])
    for heading in ("## Summary", "## Every level", "## Where the time goes", "## perf_analyzer cross-check"):
        assert heading in md
    return report


def test_quick_run_against_a_running_server(server, tiny_build, tmp_path, program):
    out = tmp_path / "report"
    args = ["-m", "veil.loadtest.runner", "--build-dir", str(tiny_build), "--quick", "--out", str(out)]
    args += ["--grpc-url", server.grpc_url, "--http-url", server.http_url, "--metrics-url", server.metrics_url]
    proc = program(args, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = check_reports(out, protocols={"grpc", "http"})
    assert {e["users"] for e in report["levels"] if e["protocol"] == "grpc"} == {1, 2}
    assert all(e["requests"] <= 25 for e in report["levels"])  # --quick bounds every round
    assert report["meta"]["defense_counters"]["veil_outputs_total"] > 0
    assert report["perf_analyzer"]["status"].startswith("skipped")


def test_quick_run_starts_its_own_server(tiny_build, tmp_path, program):
    out = tmp_path / "report"
    args = ["-m", "veil.loadtest.runner", "--build-dir", str(tiny_build), "--quick", "--out", str(out)]
    args += ["--grpc-users", "1", "--http-users", ""]
    proc = program(args, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = check_reports(out, protocols={"grpc"})
    assert report["meta"]["embedded_server"] is True
    assert (out / "tritonserver.log").exists()
    assert all(e["server_cpu"] is not None for e in report["levels"])
