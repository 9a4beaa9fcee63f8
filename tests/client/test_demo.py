"""The main job's second half on the tiny build: serve, classify raw vs defended, summarise."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from veil.client.demo import run, show

pytestmark = pytest.mark.integration


def test_demo_summary(tiny_build):
    console = Console(file=io.StringIO(), width=120)
    summary = run(tiny_build, rows=30, data_dir=None, console=console)
    show(summary, console)
    text = console.file.getvalue()
    for protocol in ("http", "grpc"):
        s = summary[protocol]
        assert s["labels_identical"]
        assert s["accuracy_raw_nonmembers"] == s["accuracy_defended_nonmembers"]
        assert 0 < s["perturbed_share"] <= 1
        assert 0 <= s["bulk_coarser_share"] <= 1 and 0 < s["bulk_mean_confidence"] <= 1
    assert summary["http_grpc_raw_identical"]
    assert summary["server_metrics"]["veil_outputs_total"] == 2 * 2 * 60  # paced and full speed
    assert "full-speed caller" in text
    assert "raw vs defended" in text and "outputs perturbed" in text
    json.dumps(summary)  # what demo.json gets
