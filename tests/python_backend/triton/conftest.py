"""A fake ``triton_python_backend_utils`` for unit tests of the adapters (the real one exists only
inside the python-backend stub; the integration tests use the real server)."""

from __future__ import annotations

import importlib
import json
import sys
import types
from typing import ClassVar

import numpy as np
import pytest


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self.code = message, code

    def message(self) -> str:
        return self._message


class FakeResponse:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class FakeRequest:
    def __init__(self, inputs: dict[str, np.ndarray], params: dict | None = None, *, outputs=()) -> None:
        self.inputs = {k: FakeTensor(k, v) for k, v in inputs.items()}
        self.params = params or {}
        self.outputs = list(outputs)

    def parameters(self) -> str:
        return json.dumps(self.params)

    def requested_output_names(self) -> list[str]:
        return self.outputs


class FakeMetric:
    def __init__(self) -> None:
        self.value = 0.0

    def increment(self, v: float) -> None:
        self.value += v

    def set(self, v: float) -> None:
        self.value = v


class FakeFamily:
    COUNTER, GAUGE = "counter", "gauge"
    registry: ClassVar[dict[str, FakeMetric]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict) -> FakeMetric:
        m = FakeMetric()
        FakeFamily.registry[self.name] = m
        return m


@pytest.fixture
def pb_utils(monkeypatch):
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = FakeTensor
    mod.TritonError = FakeError
    mod.InferenceResponse = FakeResponse
    mod.MetricFamily = FakeFamily
    mod.get_input_tensor_by_name = lambda req, name: req.inputs.get(name)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", mod)
    for name in list(sys.modules):
        if name.startswith("veil.python_backend.triton."):
            monkeypatch.delitem(sys.modules, name)
    FakeFamily.registry = {}
    return mod


def load_adapter(name: str):
    return importlib.import_module(f"veil.python_backend.triton.{name}")


def model_args(version_root, *, name: str, parameters: dict[str, str]) -> dict:
    return {
        "model_config": json.dumps({"parameters": {k: {"string_value": v} for k, v in parameters.items()}}),
        "model_repository": str(version_root),
        "model_version": "1",
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
        "model_name": name,
    }
