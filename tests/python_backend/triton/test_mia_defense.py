from __future__ import annotations

import numpy as np
import pytest

from veil.python_backend.adaptive import AdaptiveConfig
from veil.python_backend.artifact import ArtifactError
from veil.python_backend.defense import Defense

from ..conftest import make_artifact
from .conftest import FakeFamily, FakeRequest, load_adapter, model_args


@pytest.fixture
def model(pb_utils, tmp_path):
    make_artifact(2).save(tmp_path / "1" / "defense")
    m = load_adapter("mia_defense").TritonPythonModel()
    m.initialize(
        model_args(
            tmp_path,
            name="mia_defense",
            parameters={"variant": "veil", "classifier_sha256": "0" * 64, "metrics_flush_s": "0"},
        )
    )
    return m


def test_batch_of_requests_with_per_request_errors(model):
    good = np.array([[6.0, -1.0], [0.1, 0.0]], np.float32)
    responses = model.execute(
        [
            FakeRequest({"logits": good}, {"veil-client-id": "alice"}),
            FakeRequest({"logits": np.array([[np.nan, 1.0]], np.float32)}),
            FakeRequest({"logits": np.zeros((1, 3), np.float32)}),
            FakeRequest({"logits": good}, {"veil-client-id": 7}),
            FakeRequest({}),
            FakeRequest({"logits": good[::-1].copy()}),
        ]
    )
    assert len(responses) == 6
    ok = responses[0]
    assert ok.error is None
    young = AdaptiveConfig().young_threat  # alice is new: her first rows get the young floor
    expected = Defense(make_artifact(2))(good, threat=np.full(2, young))
    np.testing.assert_allclose(ok.tensors["probabilities"], expected.probabilities, atol=1e-6)
    assert ok.tensors["label"].tolist() == [[0], [0]]
    messages = [r.error.message() for r in responses[1:5]]
    assert "non-finite logits" in messages[0]
    assert "expected 2 logits per row, got 3" in messages[1]
    assert "client id must be a string" in messages[2]
    assert "missing input 'logits'" in messages[3]
    assert all(r.error.code == "INVALID_ARG" for r in responses[1:5])
    assert responses[5].error is None and responses[5].tensors["probabilities"].shape == (2, 2)
    assert FakeFamily.registry["veil_outputs_total"].value == 4
    assert FakeFamily.registry["veil_request_errors_total"].value == 4
    assert FakeFamily.registry["veil_tracked_clients"].value == 1  # alice (anonymous rows share one state)


def test_defense_failure_fails_closed(model, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(
        model,
        "defense",
        type("D", (), {"__call__": boom, "check": lambda self, z: None, "adaptive": True, "num_classes": 2})(),
    )
    responses = model.execute([FakeRequest({"logits": np.array([[5.0, 0.0]], np.float32)})])
    assert responses[0].error.code == "INTERNAL"
    assert "no output returned: simulated failure" in responses[0].error.message()
    assert responses[0].tensors == {}


def test_foreign_artifact_refuses_to_initialize(pb_utils, tmp_path):
    make_artifact(2).save(tmp_path / "1" / "defense")
    m = load_adapter("mia_defense").TritonPythonModel()
    with pytest.raises(ArtifactError, match="recalibrate"):
        m.initialize(
            model_args(tmp_path, name="mia_defense", parameters={"variant": "veil", "classifier_sha256": "a" * 64})
        )


def test_missing_artifact_refuses_to_initialize(pb_utils, tmp_path):
    m = load_adapter("mia_defense").TritonPythonModel()
    with pytest.raises(ArtifactError, match="missing"):
        m.initialize(
            model_args(tmp_path, name="mia_defense", parameters={"variant": "veil", "classifier_sha256": "0" * 64})
        )
