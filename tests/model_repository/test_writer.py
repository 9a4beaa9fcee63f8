from __future__ import annotations

import shutil

from veil.model_repository.writer import stale_models, stale_warning

from ..conftest import tiny_repository


def test_a_repository_written_by_another_version_is_found_stale(tiny_build, tmp_path):
    """The load tools re-render a build's stored repository when this code would write it
    otherwise (loadtest/server.py): a changed config or a missing asset makes a model stale."""
    assert stale_models(tiny_build / "model_repository") == []
    repo = tiny_repository(tiny_build, tmp_path / "repo")
    assert stale_models(repo) == [] and stale_warning(repo) is None
    shutil.rmtree(repo / "embedded" / "mia_defense" / "1" / "tokenizer")  # written before the step fingerprinted
    config = repo / "common" / "veil_defended" / "config.pbtxt"
    config.write_text(config.read_text().replace('model_name: "mia_defense"', 'model_name: "mia_defense" '))
    assert stale_models(repo) == ["common/veil_defended", "embedded/mia_defense"]
    assert stale_models(repo, platforms=("nvidia",)) == ["common/veil_defended"]
    # veil-serve and the gateway serve a --repository as it is, and say so
    assert "common/veil_defended, embedded/mia_defense otherwise" in stale_warning(repo)
    assert stale_warning(tmp_path) is None  # not written by the writer: nothing to compare


def test_part_models_are_linked_and_the_artifact_is_copied(tiny_build, tmp_path):
    """Every variant's step on every platform carries the defense folder: its leave-out part models
    (the bulk of it) are hard links of the build's files, its artifact files are copies."""
    from veil.export.build_dir import BuildDir
    from veil.python_backend.artifact import META_FILE, part_model_file

    build = BuildDir(tiny_build)
    repo = tiny_repository(tiny_build, tmp_path / "repo")
    folders = sorted(repo.glob("*/mia_defense*/1/defense"))
    assert len(folders) >= 4
    source = [part_model_file(build.defense, k).stat().st_ino for k in range(2)]
    for folder in folders:
        assert [part_model_file(folder, k).stat().st_ino for k in range(2)] == source
        assert (folder / META_FILE).stat().st_ino != (build.defense / META_FILE).stat().st_ino
        assert (folder / META_FILE).read_bytes() == (build.defense / META_FILE).read_bytes()
