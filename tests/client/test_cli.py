from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veil.client.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classify_texts(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    res = run_cli("--protocol", protocol, "--url", url, "--json", "a good film", "an awful plot")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a good film", "an awful plot"]
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-5 and r["label_name"] in ("0", "1") for r in rows)


def test_classify_a_file(server, tmp_path):
    f = tmp_path / "texts.txt"
    f.write_text("a good film\n\nan awful plot\nthe cast\n")
    res = run_cli("--url", server.http_url, "--file", str(f))
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == 3


def test_server_error_exits_non_zero_with_its_message(server):
    res = run_cli("--url", server.http_url, "--model", "no_such_model", "text")
    assert res.returncode == 1
    assert "no_such_model" in res.stderr
    res = run_cli("--url", server.grpc_url, "--protocol", "grpc", "--file", "-", stdin="\n   \n")
    assert res.returncode == 2  # nothing to classify: a usage error, before any request
