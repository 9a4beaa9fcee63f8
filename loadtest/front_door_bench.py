"""What TLS + API keys add to the gateway's latency: one tritonserver, two gateways in front of it.

    python -m veil.loadtest.front_door_bench --build-dir build/sst2-minilm [--requests 400]

One production tritonserver; gateway A as before (no TLS, no authentication), gateway B with TLS
(client certificates required) and API keys, both on the same upstream. Sequential single-row
requests over kept-alive connections (tritonclient, HTTP and gRPC), interleaved in a shuffled order
per round so both see the same load on the host; the same client id (``bench``) on every route so
the adaptive state, and so the defense's work, is the same. Triton straight (with the internal key)
is measured too, for what the gateway itself adds. Prints p50 / p99 per route and the ratios B/A;
``--out`` writes them as JSON. A TLS handshake is paid once per connection, so it is not in these
numbers: the last two rows time a bare TCP connect and a connect + TLS handshake (client
certificate included) to gateway B.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from veil.model_repository.spec import DEFENDED
from veil.serving import keys
from veil.serving.auth import Authenticator
from veil.serving.devcerts import make_pki
from veil.serving.gateway import Gateway
from veil.serving.production import ProductionServer
from veil.serving.tls import TlsConfig
from veil.wire import CLIENT_ID_KEY

TEXT = "a gripping, funny film"


def _inputs(mod) -> list:
    inp = mod.InferInput("text", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[TEXT.encode()]], dtype=object))
    return [inp]


def _caller(client, mod, headers: dict[str, str]) -> Callable[[], None]:
    inputs = _inputs(mod)
    return lambda: client.infer(DEFENDED, inputs, headers=headers)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(samples)}


def measure(server: ProductionServer, secure: Gateway, pki, key: str, *, requests: int, warmup: int, seed: int):
    """Latency samples per route: (protocol, route) -> seconds."""
    bench = {CLIENT_ID_KEY: "bench"}
    auth = {"authorization": f"Bearer {key}"}
    tls_http = {"ca_certs": str(pki.ca.cert), "certfile": str(pki.client.cert), "keyfile": str(pki.client.key)}
    tls_grpc = {
        "ssl": True,
        "root_certificates": str(pki.ca.cert),
        "private_key": str(pki.client.key),
        "certificate_chain": str(pki.client.cert),
    }
    triton = server.triton
    clients = {
        ("http", "triton"): (httpclient.InferenceServerClient(triton.http_url), server.internal_headers()),
        ("http", "gateway"): (httpclient.InferenceServerClient(server.http_url), {}),
        ("http", "gateway+tls+auth"): (
            httpclient.InferenceServerClient(secure.http_url, ssl=True, ssl_options=tls_http),
            auth,
        ),
        ("grpc", "triton"): (
            grpcclient.InferenceServerClient(triton.grpc_url),
            server.internal_headers(grpc_protocol=True),
        ),
        ("grpc", "gateway"): (grpcclient.InferenceServerClient(server.grpc_url), {}),
        ("grpc", "gateway+tls+auth"): (grpcclient.InferenceServerClient(secure.grpc_url, **tls_grpc), auth),
    }
    calls = {
        name: _caller(client, httpclient if name[0] == "http" else grpcclient, {**bench, **headers})
        for name, (client, headers) in clients.items()
    }
    samples: dict[tuple[str, str], list[float]] = {name: [] for name in calls}
    rng = random.Random(seed)
    order = list(calls)
    for i in range(warmup + requests):
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            calls[name]()
            if i >= warmup:
                samples[name].append(time.perf_counter() - t0)
    for client, _ in clients.values():
        client.close()
    # A new connection: TCP connect, and TCP connect + TLS handshake with the client certificate.
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.load_cert_chain(pki.client.cert, pki.client.key)
    host, port = secure.http_url.rsplit(":", 1)
    connect: list[float] = []
    handshake: list[float] = []
    samples[("tcp", "connect")], samples[("tls", "connect + handshake")] = connect, handshake
    for _ in range(max(50, requests // 4)):
        t0 = time.perf_counter()
        socket.create_connection((host, int(port))).close()
        t1 = time.perf_counter()
        with ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname=host):
            t2 = time.perf_counter()
        connect.append(t1 - t0)
        handshake.append(t2 - t1)
    return samples


def report(samples: dict[tuple[str, str], list[float]]) -> dict:
    rows = {f"{p} {route}": _percentiles(s) for (p, route), s in samples.items()}
    ratios = {}
    for p in ("http", "grpc"):
        plain, secure = rows[f"{p} gateway"], rows[f"{p} gateway+tls+auth"]
        ratios[p] = {q: secure[q] / plain[q] for q in ("p50_ms", "p99_ms")}
    plain, secure = rows["tcp connect"], rows["tls connect + handshake"]
    ratios["new connection"] = {q: secure[q] / plain[q] for q in ("p50_ms", "p99_ms")}
    return {"routes": rows, "ratios_tls_auth_over_plain": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", help="a production-mode model repository")
    p.add_argument("--build-dir", help="or a veil-build folder (rewritten in production mode)")
    p.add_argument("--requests", type=int, default=400, help="measured requests per route")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="veil-front-bench-") as tmp:
        work = Path(tmp)
        repository = args.repository
        if args.build_dir:
            from veil.model_repository.writer import rewrite_repository

            repository = rewrite_repository(args.build_dir, work / "repo", mode="production", variants=("veil",))
        if not repository:
            p.error("--repository or --build-dir is required")
        pki = make_pki(work / "pki")
        key = keys.add(work / "keys.jsonl", "bench", quota={"rows_per_s": 0, "concurrent": 64})
        auth = Authenticator(mode="keys", keys_file=work / "keys.jsonl")
        with ProductionServer(repository, log_file=work / "tritonserver.log") as server:
            secure = Gateway(
                server.triton.http_url,
                server.triton.grpc_url,
                upstream_key=server.gateway_key,
                tls=TlsConfig(pki.server.cert, pki.server.key, pki.ca.cert),
                auth=auth,
            )
            with secure:
                samples = measure(server, secure, pki, key, requests=args.requests, warmup=args.warmup, seed=args.seed)
    out = report(samples)
    print(f"{'route':<44}{'p50 ms':>10}{'p99 ms':>10}{'n':>7}")
    for name, row in out["routes"].items():
        print(f"{name:<44}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}{row['n']:>7}")
    for name, ratio in out["ratios_tls_auth_over_plain"].items():
        print(f"TLS+auth / plain gateway, {name}: p50 x{ratio['p50_ms']:.2f}, p99 x{ratio['p99_ms']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
