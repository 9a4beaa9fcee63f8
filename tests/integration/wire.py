"""Raw KServe v2 requests over HTTP and gRPC for the robustness tests.

tritonclient refuses to build many of the requests these tests need (wrong types, malformed
parameters, unknown outputs), so requests are assembled here byte by byte: HTTP bodies use the
binary-tensor extension (JSON header + raw tensors), gRPC goes through the generated stub.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import requests
from tritonclient.grpc import service_pb2, service_pb2_grpc

OUTPUTS = ("probabilities", "label")
_DTYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP64": np.float64}
_GRPC_OPTIONS = [("grpc.max_send_message_length", 1 << 28), ("grpc.max_receive_message_length", 1 << 28)]


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes


def texts(items: Sequence[str | bytes], *, shape: Sequence[int] | None = None, name: str = "text") -> Tensor:
    """A BYTES tensor (each element: 4-byte little-endian length, then the bytes)."""
    blobs = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in items]
    raw = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
    return Tensor(name, "BYTES", tuple(shape) if shape is not None else (len(blobs), 1), raw)


def numbers(array: np.ndarray, datatype: str, name: str) -> Tensor:
    return Tensor(name, datatype, tuple(array.shape), np.ascontiguousarray(array).tobytes())


@dataclass
class Answer:
    """What came back: a status ("200", "400", ... or "OK", "INVALID_ARGUMENT", ...), the error
    message (empty on success) and the decoded outputs."""

    status: str
    message: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("200", "OK")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


class Wire:
    """One protocol to one server; ``headers`` go with every call (e.g. a restricted-API key)."""

    def __init__(self, protocol: str, url: str, *, headers: Mapping[str, str] | None = None) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(protocol)
        self.protocol = protocol
        self.url = url
        self.headers = dict(headers or {})
        self._channel = grpc.insecure_channel(url, options=_GRPC_OPTIONS) if protocol == "grpc" else None
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel) if self._channel else None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(
        self,
        model: str,
        inputs: Sequence[Tensor],
        *,
        parameters: object = None,
        outputs: Sequence[str] = OUTPUTS,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> Answer:
        headers = {**self.headers, **(headers or {})}
        if self.protocol == "http":
            return self._http_infer(model, inputs, parameters, outputs, headers, timeout)
        return self._grpc_infer(model, inputs, parameters, outputs, headers, timeout)

    def classify(self, model: str, items: Sequence[str | bytes], **kwargs: object) -> Answer:
        return self.infer(model, [texts(items)], **kwargs)

    # -- HTTP ------------------------------------------------------------------------------------

    def http(self, method: str, path: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Answer:
        """Any HTTP call; the JSON ``error`` of a failure becomes the message."""
        resp = requests.request(
            method, f"http://{self.url}{path}", data=body, headers={**self.headers, **(headers or {})}, timeout=60
        )
        return Answer(str(resp.status_code), _http_error(resp))

    def _http_infer(self, model, inputs, parameters, outputs, headers, timeout) -> Answer:
        doc: dict = {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.shape),
                    "datatype": t.datatype,
                    "parameters": {"binary_data_size": len(t.raw)},
                }
                for t in inputs
            ],
            "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs],
        }
        if parameters is not None:
            doc["parameters"] = parameters
        header = json.dumps(doc).encode()
        body = header + b"".join(t.raw for t in inputs)
        resp = requests.post(
            f"http://{self.url}/v2/models/{model}/infer",
            data=body,
            headers={
                "Inference-Header-Content-Length": str(len(header)),
                "Content-Type": "application/octet-stream",
                **headers,
            },
            timeout=timeout,
        )
        if resp.status_code != 200:
            return Answer(str(resp.status_code), _http_error(resp))
        size = int(resp.headers.get("Inference-Header-Content-Length", len(resp.content)))
        meta = json.loads(resp.content[:size])
        out, offset = {}, size
        for o in meta["outputs"]:
            n = o["parameters"]["binary_data_size"]
            blob = resp.content[offset : offset + n]
            offset += n
            out[o["name"]] = np.frombuffer(blob, dtype=_DTYPES[o["datatype"]]).reshape(o["shape"])
        return Answer("200", "", out)

    # -- gRPC ------------------------------------------------------------------------------------

    def grpc_call(self, rpc: str, request, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0):
        """Any unary RPC: (status, message, response or None)."""
        try:
            response = getattr(self.stub, rpc)(request, metadata=self._metadata(headers), timeout=timeout)
        except grpc.RpcError as err:
            return Answer(err.code().name, err.details() or ""), None
        return Answer("OK"), response

    def _metadata(self, headers: Mapping[str, str] | None) -> list[tuple[str, str]]:
        return [(k.lower(), v) for k, v in {**self.headers, **(headers or {})}.items()]

    def _grpc_infer(self, model, inputs, parameters, outputs, headers, timeout) -> Answer:
        request = service_pb2.ModelInferRequest(
            model_name=model,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(name=t.name, datatype=t.datatype, shape=list(t.shape))
                for t in inputs
            ],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
            raw_input_contents=[t.raw for t in inputs],
        )
        for key, value in (parameters or {}).items():
            param = request.parameters[key]
            if isinstance(value, bool):
                param.bool_param = value
            elif isinstance(value, int):
                param.int64_param = value
            else:
                param.string_param = str(value)
        try:
            resp = self.stub.ModelInfer(request, metadata=self._metadata(headers), timeout=timeout)
        except grpc.RpcError as err:
            return Answer(err.code().name, err.details() or "")
        out = {}
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True):
            out[o.name] = np.frombuffer(raw, dtype=_DTYPES[o.datatype]).reshape(list(o.shape))
        return Answer("OK", "", out)


def _http_error(resp: requests.Response) -> str:
    if resp.status_code == 200:
        return ""
    try:
        return str(resp.json().get("error", resp.text))
    except ValueError:
        return resp.text


def caller_fault(answer: Answer) -> bool:
    """HTTP 4xx, or the gRPC codes that mean the request itself was wrong."""
    if answer.status.isdigit():
        return 400 <= int(answer.status) < 500
    return answer.status in ("INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED")


def valid_probabilities(answer: Answer, rows: int, classes: int = 2) -> bool:
    """A complete answer: [rows, classes] finite float32 probabilities summing to 1, and labels
    [rows, 1] equal to their argmax."""
    if not answer.ok or set(answer.outputs) != set(OUTPUTS):
        return False
    p, label = answer["probabilities"], answer["label"]
    return (
        p.shape == (rows, classes)
        and p.dtype == np.float32
        and bool(np.isfinite(p).all())
        and bool((p >= 0).all())
        and bool(np.allclose(p.sum(1), 1.0, atol=1e-5))
        and label.shape == (rows, 1)
        and bool((label[:, 0] == p.argmax(1)).all())
    )


class Callers:
    """Caller threads (``self.threads``, set by the subclass) that run until the ``with`` block ends
    (they watch ``self.stopping``)."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)
