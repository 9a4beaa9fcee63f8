"""The measured abuse run of issue 16 (opt-in: ``VEIL_ABUSE_RUN=1``; about two minutes).

The production command (``python -m veil.serving.gateway``) runs in its own process on the tiny
build; this test holds 2,000 idle or half-sent connections (HTTP and gRPC), sends compressed
parameter bombs, an oversized batch and five of the largest allowed batches, keeps asking as
another caller meanwhile, and compares the resident memory of the gateway, tritonserver and the
python stubs before and after. Numbers are printed as JSON (and written to ``$VEIL_ABUSE_OUT`` if
set); docs/serving-hardening.md quotes them.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
import requests
from tritonclient.grpc import service_pb2

from veil.model_repository.spec import DEFENDED
from veil.serving.launcher import free_port, server_env, stub_model_name
from veil.serving.policy import Limits
from veil.serving.supervisor import raise_fd_limit

from ..conftest import tiny_repository
from .wire import Wire, valid_probabilities

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("VEIL_ABUSE_RUN") != "1", reason="opt-in measured run: VEIL_ABUSE_RUN=1"),
]
IDLE = 2000
PROBE = ["a good film", "an awful plot"]
LARGEST = ["word " * 800] * 256
"""The largest batch allowed: 256 texts of 4,000 bytes (1,024,000 bytes of text)."""


def _rss(gateway: psutil.Process) -> dict[str, float]:
    """Resident MB of the gateway, tritonserver and the stubs (summed)."""
    out = {"gateway": gateway.memory_info().rss / 2**20, "tritonserver": 0.0, "stubs": 0.0}
    for child in gateway.children(recursive=True):
        try:
            model = stub_model_name(child)
            rss = child.memory_info().rss / 2**20
        except psutil.Error:
            continue
        out["stubs" if model else "tritonserver"] += rss
        if model:
            out[f"stub:{model}"] = out.get(f"stub:{model}", 0.0) + rss
    out["total"] = out["gateway"] + out["tritonserver"] + out["stubs"]
    return {k: round(v, 1) for k, v in out.items()}


def _ask(url: str, n: int) -> list[float]:
    """``n`` defended requests as another caller; their latencies (each must succeed)."""
    took = []
    with Wire("http", url) as wire:
        for _ in range(n):
            t0 = time.monotonic()
            assert valid_probabilities(wire.classify(DEFENDED, PROBE, headers={"veil-client-id": "other"}), 2)
            took.append(time.monotonic() - t0)
    return took


def _closed(sock: socket.socket) -> bool:
    """Has the gateway closed it? (Drains what it sent first: gRPC's SETTINGS, an HTTP 408.)"""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _bomb_requests() -> tuple[bytes, service_pb2.ModelInferRequest]:
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a film"]}]}
    doc["parameters"] = {"x": "a" * (60 << 20)}
    request = service_pb2.ModelInferRequest(model_name=DEFENDED)
    request.parameters["x"].string_param = "a" * (60 << 20)
    return gzip.compress(json.dumps(doc).encode()), request


def _abuse_round(gateway: psutil.Process, http_url: str, grpc_url: str) -> dict:
    """One round: hold 2,000 connections, bomb, send big batches, ask as another caller."""
    http_bomb, grpc_bomb = _bomb_requests()
    quiet = _ask(http_url, 20)
    t0 = time.monotonic()
    socks = []
    for i in range(IDLE):
        host, port = (http_url if i % 2 else grpc_url).rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
        if i % 4 == 1:
            s.sendall(f"POST /v2/models/{DEFENDED}/infer HTTP/1.1\r\nHost: x\r\n".encode())
        socks.append(s)
    opened_s = time.monotonic() - t0
    held = _rss(gateway)
    with ThreadPoolExecutor(4) as pool:
        others = pool.submit(_ask, http_url, 20)
        http_bombs = [
            requests.post(
                f"http://{http_url}/v2/models/{DEFENDED}/infer",
                data=http_bomb,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
                timeout=60,
            ).status_code
            for _ in range(3)
        ]
        grpc_bombs = []
        with grpc.insecure_channel(grpc_url, compression=grpc.Compression.Gzip) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                response_deserializer=service_pb2.ModelInferResponse.FromString,
            )
            for _ in range(3):
                try:
                    call(grpc_bomb, timeout=60)
                    grpc_bombs.append("OK")
                except grpc.RpcError as err:
                    grpc_bombs.append(err.code().name)
        with Wire("http", http_url) as wire:
            batch = wire.classify(DEFENDED, ["a" * 20_000] * 256).status
            largest = [wire.classify(DEFENDED, LARGEST, timeout=120) for _ in range(5)]
        during = others.result(120)
    peak = _rss(gateway)
    time.sleep(Limits().header_timeout_s + 3)
    closed = sum(_closed(s) for s in socks)
    for s in socks:
        s.close()
    time.sleep(3)
    after = _rss(gateway)
    after_quiet = _ask(http_url, 20)
    return {
        "opened_in_s": round(opened_s, 2),
        "closed_by_gateway_after_header_timeout": closed,
        "rss_mb": {"holding_2000": held, "after_bombs": peak, "after": after},
        "http_bomb_status": http_bombs,
        "grpc_bomb_status": grpc_bombs,
        "oversized_batch_status": batch,
        "largest_allowed_batches_ok": sum(valid_probabilities(a, 256) for a in largest),
        "other_caller_latency_s": {
            "quiet_median": round(sorted(quiet)[len(quiet) // 2], 3),
            "during_max": round(max(during), 3),
            "during_median": round(sorted(during)[len(during) // 2], 3),
            "after_median": round(sorted(after_quiet)[len(after_quiet) // 2], 3),
        },
    }


def test_2000_idle_connections_and_compressed_bombs(tiny_build, tmp_path):
    raise_fd_limit()
    repo = tiny_repository(tiny_build, tmp_path / "repo", mode="production", variants=("veil",))
    http_port, grpc_port = free_port(), free_port()
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "veil.serving.gateway", f"--repository={repo}", f"--http-port={http_port}",
         f"--grpc-port={grpc_port}", f"--log-file={tmp_path / 'tritonserver.log'}"],
        stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True,
    )  # fmt: skip
    http_url, grpc_url = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if requests.get(f"http://{http_url}/v2/health/ready", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        gateway = psutil.Process(proc.pid)
        _ask(http_url, 30)  # warm up every step, and each step's allocator with the largest allowed batch
        with Wire("http", http_url) as wire:
            assert all(valid_probabilities(wire.classify(DEFENDED, LARGEST, timeout=120), 256) for _ in range(2))
        time.sleep(2)
        baseline = _rss(gateway)
        rounds = []
        for _ in range(int(os.environ.get("VEIL_ABUSE_ROUNDS", "2"))):
            numbers = _abuse_round(gateway, http_url, grpc_url)
            after = numbers["rss_mb"]["after"]
            numbers["total_growth"] = round((after["total"] - baseline["total"]) / baseline["total"], 4)
            numbers["gateway_alive"] = proc.poll() is None
            rounds.append(numbers)
        report = {"idle_connections": IDLE, "baseline_rss_mb": baseline, "rounds": rounds}
        print(json.dumps(report, indent=1))
        if os.environ.get("VEIL_ABUSE_OUT"):
            with open(os.environ["VEIL_ABUSE_OUT"], "w") as f:
                json.dump(report, f, indent=1)
        for numbers in rounds:
            assert numbers["http_bomb_status"] == [415] * 3 and numbers["oversized_batch_status"] == "413"
            assert numbers["grpc_bomb_status"] == ["RESOURCE_EXHAUSTED"] * 3
            assert numbers["closed_by_gateway_after_header_timeout"] == IDLE and numbers["gateway_alive"]
            assert numbers["largest_allowed_batches_ok"] == 5
            assert abs(numbers["total_growth"]) <= 0.10, numbers
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
