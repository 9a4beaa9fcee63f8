"""The launcher, and the defended model failing closed when its artifact is unusable."""

from __future__ import annotations

import shutil

import pytest

from veil.serving.launcher import ServerError, TritonServer, prepare_backends, repositories_for

pytestmark = pytest.mark.integration


def test_backend_folder_has_the_stub_for_this_python(tmp_path):
    backends = prepare_backends(tmp_path)
    names = {p.name for p in (backends / "python").iterdir()}
    assert {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"} <= names


def test_corrupt_artifact_keeps_the_defended_model_from_loading(tiny_build, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_build / "model_repository", repo)
    tensors = repo / "embedded" / "mia_defense" / "1" / "defense" / "defense.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-10] + b"0" * 10)
    server = TritonServer(repositories_for(repo), log_file=tmp_path / "log.txt", startup_timeout=120)
    with pytest.raises(ServerError, match="before becoming ready"):
        server.start()
    log = (tmp_path / "log.txt").read_text()
    assert "corrupt" in log and "mia_defense" in log
    assert not server.alive()
