"""perf_analyzer helpers: its CSV, its input format, and a clear reason when it is not there."""

from __future__ import annotations

import json
import os

import pytest

from veil.loadtest import perf_analyzer as pa

CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "1,334.502,6,481,1,93,1797,597,2,2445,4481,6514,11998\n"
)


def test_parse_csv_reads_numbers():
    (row,) = pa.parse_csv(CSV)
    assert row["Concurrency"] == 1 and row["Inferences/Second"] == pytest.approx(334.502)
    assert row["p99 latency"] == 11998


def test_input_data_is_perf_analyzers_json_for_a_string_input(tmp_path):
    path = pa.write_input_data(["a fine film", "flat"], tmp_path / "in.json")
    assert json.loads(path.read_text()) == {"data": [{"text": ["a fine film"]}, {"text": ["flat"]}]}


def test_missing_binary_and_wheel_is_reported_not_raised_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no perf_analyzer on PATH
    with pytest.raises(pa.PerfAnalyzerUnavailable, match="no tritonclient"):
        pa.find_perf_analyzer(tmp_path)
    assert os.listdir(tmp_path) == []
