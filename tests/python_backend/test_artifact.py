from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from veil.python_backend.artifact import ArtifactError, DefenseArtifact, part_model_file, sha256_file
from veil.python_backend.defense import Defense

from .conftest import make_artifact


def test_round_trip(tmp_path):
    art = make_artifact(3)
    art.save(tmp_path)
    loaded = DefenseArtifact.load(tmp_path, expected_classifier_sha256="0" * 64)
    z = np.random.default_rng(0).normal(0, 4, (20, 3)).astype(np.float32)
    assert (Defense(art)(z).probabilities == Defense(loaded)(z).probabilities).all()
    assert loaded.tracker_mask() is None  # built without calibration signatures: no mask


def test_the_tracker_mask_round_trips_and_older_artifacts_have_none(tmp_path):
    replace(make_artifact(2), tracker_common=[3, 7, 2**31 - 2]).save(tmp_path / "new")
    np.testing.assert_array_equal(DefenseArtifact.load(tmp_path / "new").tracker_mask(), [3, 7, 2**31 - 2])
    make_artifact(2).save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "defense.json").read_text())
    meta.pop("tracker_common")  # as an artifact written before the field existed
    (tmp_path / "old" / "defense.json").write_text(json.dumps(meta))
    assert DefenseArtifact.load(tmp_path / "old").tracker_mask() is None


def test_sequence_hashes_round_trip_and_older_artifacts_serve_every_match_as_a_copy(tmp_path):
    art = make_artifact(2)
    seqs = np.arange(len(art.index_labels), dtype=np.int64) * 7 + 2**40
    replace(art, index_sequences=seqs).save(tmp_path / "new")
    index = DefenseArtifact.load(tmp_path / "new").member_index()
    assert index.has_sequences and index.exact(np.array([seqs[5], seqs[5] + 1])).tolist() == [True, False]
    art.save(tmp_path / "old")
    old = DefenseArtifact.load(tmp_path / "old").member_index()
    assert not old.has_sequences
    with pytest.raises(ValueError, match="no sequence hashes"):
        old.exact(seqs[:1])


def test_leave_out_parts_round_trip_and_their_models_are_checked(tmp_path):
    """The part of each training text and the part models' files: loaded as saved; a wrong shape,
    an unknown part, a missing or a changed part model file refuses to load (fail closed)."""
    art = make_artifact(3)
    n = len(art.index_labels)
    parts = np.arange(n, dtype=np.int64) % 2

    def saved(where: str, **changes) -> Path:
        folder = tmp_path / where
        folder.mkdir()
        digests = []
        for k in range(2):
            part_model_file(folder, k).write_bytes(f"part model {k}".encode())
            digests.append(sha256_file(part_model_file(folder, k)))
        replace(art, **{"index_parts": parts, "part_models": digests, **changes}).save(folder)
        return folder

    good = DefenseArtifact.load(saved("new"))
    assert good.member_index().has_parts and good.member_index().parts.tolist() == parts.tolist()
    assert len(good.part_models) == 2
    for where, changes in (("short", {"index_parts": parts[:-1]}), ("unknown", {"index_parts": parts + 1})):
        with pytest.raises(ArtifactError, match="leave-out"):
            DefenseArtifact.load(saved(where, **changes))
    changed = saved("changed")
    part_model_file(changed, 1).write_bytes(b"another model")
    with pytest.raises(ArtifactError, match=r"part1\.onnx"):
        DefenseArtifact.load(changed)
    missing = saved("missing")
    part_model_file(missing, 0).unlink()
    with pytest.raises(ArtifactError, match=r"part0\.onnx"):
        DefenseArtifact.load(missing)
    art.save(tmp_path / "old")
    assert not DefenseArtifact.load(tmp_path / "old").member_index().has_parts


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
