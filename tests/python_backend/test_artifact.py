from __future__ import annotations

import json

import numpy as np
import pytest

from veil.python_backend.artifact import ArtifactError, DefenseArtifact
from veil.python_backend.defense import Defense

from .conftest import make_artifact


def test_round_trip(tmp_path):
    art = make_artifact(3)
    art.save(tmp_path)
    loaded = DefenseArtifact.load(tmp_path, expected_classifier_sha256="0" * 64)
    z = np.random.default_rng(0).normal(0, 4, (20, 3)).astype(np.float32)
    assert (Defense(art)(z).probabilities == Defense(loaded)(z).probabilities).all()


def test_missing_file(tmp_path):
    make_artifact(2).save(tmp_path)
    (tmp_path / "defense.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        DefenseArtifact.load(tmp_path)


def test_corrupt_tensors(tmp_path):
    make_artifact(2).save(tmp_path)
    data = bytearray((tmp_path / "defense.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "defense.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        DefenseArtifact.load(tmp_path)


def test_corrupt_metadata(tmp_path):
    make_artifact(2).save(tmp_path)
    (tmp_path / "defense.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        DefenseArtifact.load(tmp_path)


def test_other_classifier(tmp_path):
    make_artifact(2).save(tmp_path)
    with pytest.raises(ArtifactError, match="recalibrate"):
        DefenseArtifact.load(tmp_path, expected_classifier_sha256="f" * 64)


def test_future_format(tmp_path):
    make_artifact(2).save(tmp_path)
    meta = json.loads((tmp_path / "defense.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "defense.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format"):
        DefenseArtifact.load(tmp_path)
