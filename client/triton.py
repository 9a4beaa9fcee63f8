"""A small client for Veil's ensembles over HTTP or gRPC (tritonclient underneath)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from veil import wire
from veil.wire import CLIENT_ID_KEY

__all__ = ["InferenceServerException", "VeilClient"]


class VeilClient:
    """``classify(texts)`` against one ensemble; ``protocol`` is "http" or "grpc"."""

    def __init__(self, url: str, *, protocol: str = "http", timeout: float = 60.0) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        self.protocol = protocol
        self.module = httpclient if protocol == "http" else grpcclient
        if protocol == "http":
            self.client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
        else:
            self.client = grpcclient.InferenceServerClient(url)
        self.timeout = timeout

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> VeilClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def label_names(self, model: str) -> list[str]:
        if self.protocol == "http":
            params = self.client.get_model_config(model).get("parameters", {})
        else:
            params = self.client.get_model_config(model, as_json=True)["config"].get("parameters", {})
        value = params.get("label_names", {}).get("string_value", "")
        return json.loads(value) if value else []

    def infer(
        self,
        model: str,
        texts: Sequence[str | bytes],
        *,
        client_id: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        data = np.array([[t.encode("utf-8") if isinstance(t, str) else t] for t in texts], dtype=object)
        inp = self.module.InferInput(wire.TEXT, [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(data.reshape(len(texts), 1))
        outputs = [
            self.module.InferRequestedOutput(wire.PROBABILITIES),
            self.module.InferRequestedOutput(wire.LABEL),
        ]
        params = {CLIENT_ID_KEY: client_id} if client_id is not None else None
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        return self.client.infer(model, [inp], outputs=outputs, parameters=params, headers=headers, **kwargs)

    def classify(
        self,
        texts: Sequence[str | bytes],
        *,
        model: str = "veil_defended",
        client_id: str | None = None,
        batch_size: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, C] float32, labels [N]) in request order, ``batch_size`` texts per request."""
        probs, labels = [], []
        for start in range(0, len(texts), batch_size):
            res = self.infer(model, texts[start : start + batch_size], client_id=client_id)
            probs.append(res.as_numpy(wire.PROBABILITIES))
            labels.append(res.as_numpy(wire.LABEL).reshape(-1))
        if not probs:
            raise ValueError("no texts to classify")
        return np.concatenate(probs), np.concatenate(labels)
