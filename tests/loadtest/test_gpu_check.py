"""The GPU script's host half and its pipeline stage, on the tiny build and the CPU (no device here)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


def test_bundle_fits_and_the_pipeline_stage_runs_on_it(tiny_build, tmp_path, capsys):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from veil.loadtest import gpu_check, gpu_pipeline

    bundle = tmp_path / "bundle"
    manifest = gpu_check.prepare(bundle, tiny_build, rows=64, with_triton=False, wheels=False)
    assert manifest["bytes"] <= gpu_check.CAP_BYTES
    assert {"classifier", "defense", "options.json", "texts.json", "eval_inputs.npz"} <= {
        p.name for p in bundle.iterdir()
    }
    # stage 0's plumbing, the CPU standing in for the device: every variant passes against itself
    det = gpu_check.determinism(bundle, device="cpu")
    assert det["ok"] and set(det["variants"]) == set(gpu_check.DETERMINISM_VARIANTS)
    assert all(v["rows_equal_to_cpu"] == 1.0 for v in det["variants"].values())
    assert gpu_pipeline.main(["--bundle", str(bundle), "--device", "cpu", "--repeats", "6"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["batch"] for r in result["rows"]] == list(gpu_pipeline.BATCHES)
    for row in result["rows"]:
        for side in ("undefended", "defended"):
            assert row[side]["p50_ms"] > 0 and row[side]["rows_per_s"] > 0
        assert row["ratio"]["p50"] > 0 and row["projected"]["p50"] > 0
    # stage 3's repository: the defense step fed logits (ensemble layout) on KIND_GPU, from the spec
    gpu_check._triton_repository(gpu_check.BuildDir(tiny_build), tmp_path / "repo")
    config = text_format.Parse(
        (tmp_path / "repo" / "mia_defense" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.parameters["hosts_classifier"].string_value == "0"
    assert not (tmp_path / "repo" / "mia_defense" / "1" / "model.onnx").exists()
    assert (tmp_path / "repo" / "softmax" / "1" / "model.py").exists()
