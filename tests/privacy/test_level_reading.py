from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from veil.privacy import level_reading


def test_a_level_independent_of_membership_reads_half_and_a_dependent_one_does_not():
    rng = np.random.default_rng(0)
    member = np.arange(2000) % 2 == 0
    floor = rng.random((2000, 2)).astype(np.float32)
    independent = floor.copy()
    coarse = rng.random(2000) < 0.4
    independent[coarse] = 0.5
    r = level_reading.level_reading(independent, floor, member)
    assert r["auc"] == pytest.approx(0.5, abs=0.04) and r["rows"] == 2000
    assert r["coarser_members"] == pytest.approx(coarse[member].mean())
    dependent = floor.copy()
    dependent[member & (rng.random(2000) < 0.6)] = 0.5  # members pushed coarser more often
    dependent[~member & (rng.random(2000) < 0.3)] = 0.5
    assert level_reading.level_reading(dependent, floor, member)["auc"] > 0.6
    assert level_reading.level_reading(floor, floor, member)["auc"] == 0.5  # never coarser: nothing to read


def test_the_command_reads_a_runs_cached_outputs(tmp_path, capsys):
    rng = np.random.default_rng(1)
    member = np.arange(100) % 2 == 0
    floor = rng.random((100, 2)).astype(np.float32)
    burst = floor.copy()
    burst[:50:2] = 0.5  # half the training texts coarser, no non-member
    served = SimpleNamespace(name="veil", source="served", target=SimpleNamespace(probabilities=burst))
    offline = SimpleNamespace(name="veil", source="offline", target=SimpleNamespace(probabilities=floor))
    for seed, views in ((11, [offline, served]), (12, [offline])):
        (tmp_path / f"seed{seed}").mkdir()
        measured = {"views": views, "member": member, "benign": {"veil": floor}}
        (tmp_path / f"seed{seed}" / "views.pkl").write_bytes(pickle.dumps(measured))
    assert level_reading.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 11 | 50.0% | 0.0% | 0.750 |" in out and "| 12 |" not in out  # seed 12 served no burst
    with pytest.raises(SystemExit):
        level_reading.main([str(tmp_path), "--seeds", "12"])
