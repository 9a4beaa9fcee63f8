"""A small client for Veil's ensembles over HTTP or gRPC (tritonclient underneath)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from veil import wire
from veil.wire import CLIENT_ID_KEY

__all__ = ["InferenceServerException", "VeilClient"]


class VeilClient:
    """``classify(texts)`` against one ensemble; ``protocol`` is "http" or "grpc".

    Through the production gateway's front door (docs/front-door.md): ``api_key`` is sent as
    ``authorization: Bearer <key>`` on every call; ``ca_file`` turns on TLS (the server's CA), and
    ``cert_file`` + ``key_file`` present a client certificate (mTLS)."""

    def __init__(
        self,
        url: str,
        *,
        protocol: str = "http",
        timeout: float = 60.0,
        api_key: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError("protocol must be 'http' or 'grpc'")
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if cert_file is not None and ca_file is None:
            raise ValueError("a client certificate (mTLS) needs ca_file (TLS) too")
        self.protocol = protocol
        self.module = httpclient if protocol == "http" else grpcclient
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        if protocol == "http":
            tls = {}
            if ca_file is not None:
                options = {"ca_certs": ca_file} | ({"certfile": cert_file, "keyfile": key_file} if cert_file else {})
                tls = {"ssl": True, "ssl_options": options}
            self.client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout, **tls
            )
        else:
            tls = {}
            if ca_file is not None:
                tls = {"root_certificates": ca_file, "private_key": key_file, "certificate_chain": cert_file}
                tls["ssl"] = True
            self.client = grpcclient.InferenceServerClient(url, **tls)
        self.timeout = timeout

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> VeilClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def label_names(self, model: str) -> list[str]:
        if self.protocol == "http":
            params = self.client.get_model_config(model, headers=self.headers).get("parameters", {})
        else:
            config = self.client.get_model_config(model, headers=self.headers, as_json=True)
            params = config["config"].get("parameters", {})
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
        headers = self.headers | (headers or {})
        return self.client.infer(model, [inp], outputs=outputs, parameters=params, headers=headers, **kwargs)

    def classify(
        self,
        texts: Sequence[str | bytes],
        *,
        model: str = "veil_defended",
        client_id: str | None = None,
        batch_size: int = 64,
        pace: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, C] float32, labels [N]) in request order, ``batch_size`` texts per request.

        ``pace``: wait this many times each request's round trip before sending the next (0: back to
        back). A lone caller at pace 4 keeps the server busy about a fifth of the time, under the
        busy share at which adaptive intensity starts to coarsen it (``AdaptiveConfig.busy_low``)."""
        probs, labels = [], []
        for start in range(0, len(texts), batch_size):
            sent = time.perf_counter()
            res = self.infer(model, texts[start : start + batch_size], client_id=client_id)
            probs.append(res.as_numpy(wire.PROBABILITIES))
            labels.append(res.as_numpy(wire.LABEL).reshape(-1))
            if pace > 0 and start + batch_size < len(texts):
                time.sleep(pace * (time.perf_counter() - sent))
        if not probs:
            raise ValueError("no texts to classify")
        return np.concatenate(probs), np.concatenate(labels)
