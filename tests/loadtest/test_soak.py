"""The CI-short soak: the production deployment at saturation, no failed request, server memory
flat after warm-up (the program runs in its own process: Locust patches it for gevent)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_short_soak_has_no_failures_and_flat_memory(tiny_build, program):
    proc = program(
        ["-m", "veil.loadtest.soak", "--build-dir", str(tiny_build), "--quick", "--warmup", "5", "--seconds", "12"],
        timeout=400,
    )
    print(proc.stdout[-2000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tiny_build / "soak" / "soak.json").read_text())
    assert report["passed"] and report["failures"] == 0 and report["locust_failures"] == 0
    assert report["requests"] > 50
    assert set(report["per_target"]) == {"grpc:veil_defended", "http:veil_defended"}
    # production mode, hosted layout: the defense step runs the classifier itself
    assert report["memory_final"]["stubs"].keys() == {"tokenizer", "mia_defense"}
    assert report["growth"]["server_total"] < 0.05
    assert report["gateway_exit_code"] == 0
