"""The defense step's state wiring (fake pb_utils; the real server runs it in
tests/integration/test_shared_state.py): the fallback when the store is down, the refusal of split state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from veil.python_backend.defense import Defense
from veil.python_backend.threat_state import FALLBACK_THREAT
from veil.serving.launcher import free_port

from ..conftest import make_artifact
from .conftest import FakeFamily, FakeRequest, load_adapter, model_args


def _args(tmp_path, *, instances: int, **parameters: str) -> dict:
    args = model_args(
        tmp_path,
        name="mia_defense",
        parameters={"variant": "veil", "classifier_sha256": "0" * 64, "metrics_flush_s": "0", **parameters},
    )
    config = json.loads(args["model_config"])
    config["instance_group"] = [{"count": instances, "kind": "KIND_CPU"}]
    args["model_config"] = json.dumps(config)
    return args


def test_an_unreachable_store_serves_threat_one_and_says_so(pb_utils, tmp_path, monkeypatch):
    monkeypatch.delenv("VEIL_STATE_URL", raising=False)
    make_artifact(2).save(tmp_path / "1" / "defense")
    model = load_adapter("mia_defense").TritonPythonModel()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    model.initialize(_args(tmp_path, instances=2, state_backend="redis", state_url=url))
    logits = np.array([[6.0, -1.0], [0.1, 0.0]], np.float32)
    (response,) = model.execute([FakeRequest({"logits": logits}, {"veil-client-id": "alice"})])
    assert response.error is None
    expected = Defense(make_artifact(2))(logits, threat=np.full(2, FALLBACK_THREAT))
    np.testing.assert_array_equal(response.tensors["probabilities"], expected.probabilities)
    assert FakeFamily.registry["veil_state_fallback_total"].value == 2
    assert FakeFamily.registry["veil_state_degraded"].value == 1
    model.finalize()


def test_per_process_state_is_refused_with_several_instances(pb_utils, tmp_path):
    make_artifact(2).save(tmp_path / "1" / "defense")
    model = load_adapter("mia_defense").TritonPythonModel()
    with pytest.raises(RuntimeError, match="each keep their own client table"):
        model.initialize(_args(tmp_path, instances=2, state_backend="memory"))
