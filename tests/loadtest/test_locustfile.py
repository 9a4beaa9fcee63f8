"""The Locust users, through Locust's own command line, against the real server (a few requests)."""

from __future__ import annotations

import json

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.integration
CAP = 8


@pytest.mark.parametrize("model", ["veil_defended", "veil_raw"])
def test_grpc_and_http_users_send_real_sentences_and_fire_request_events(server, tiny_build, tmp_path, program, model):
    samples = tmp_path / "samples.json"
    env = {
        "VEIL_GRPC_URL": server.grpc_url,
        "VEIL_HTTP_URL": server.http_url,
        "VEIL_BUILD_DIR": str(tiny_build),
        "VEIL_LOADTEST_MODEL": model,
        "VEIL_LOADTEST_MAX_REQUESTS": str(CAP),
        "VEIL_LOADTEST_SAMPLES_OUT": str(samples),
    }
    args = ["-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", "2", "-r", "100"]
    # users stop themselves after CAP requests; --stop-timeout lets a slow request finish at the time limit
    args += ["-t", "3s", "--stop-timeout", "20", "--json", "--skip-log", "GrpcEnsembleUser", "HttpEnsembleUser"]
    proc = program(args, env=env, timeout=90)
    ours = samples.read_text() if samples.exists() else "(no samples written)"
    assert proc.returncode == 0, f"{proc.stderr[-2000:]}\n{proc.stdout[-2000:]}\n{ours[-2000:]}"

    # Locust's view: one request event stream per protocol, named protocol:model, no failures
    stats = {s["name"]: s for s in json.loads(proc.stdout)}
    assert set(stats) == {f"grpc:{model}", f"http:{model}"}
    assert {stats[n]["method"] for n in stats} == {"GRPC", "HTTP"}
    for s in stats.values():
        assert 1 <= s["num_requests"] <= CAP
        assert s["num_failures"] == 0

    # our own microsecond samples agree with Locust's count
    ours = json.loads(ours)
    for name, s in stats.items():
        assert ours[name]["ok"] == s["num_requests"]
        assert ours[name]["errors"] == 0, ours[name]["error_examples"]
        assert ours[name]["p50_us"] > 0
