"""``python -m veil.serving.gateway``: serve veil_defended and nothing else."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from veil.serving.gateway import Gateway
from veil.serving.policy import CLIENT_ID_SOURCES
from veil.serving.production import ProductionServer
from veil.serving.supervisor import raise_fd_limit, restart_step, serve, stop_on_signals


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Serve veil_defended and nothing else: tritonserver on loopback behind the Veil gateway"
    )
    p.add_argument("--repository", help="folder written by veil-build --mode production")
    p.add_argument(
        "--build-dir",
        help="or a veil-build folder: its repository is rewritten in production mode into <build-dir>/production/",
    )
    p.add_argument("--platform", default="embedded", choices=("embedded", "nvidia"))
    p.add_argument("--host", default="127.0.0.1", help="address the gateway listens on (0.0.0.0 for all)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--log-file", default="build/tritonserver.log")
    p.add_argument("--client-id-source", choices=CLIENT_ID_SOURCES, default="caller")
    p.add_argument("--max-restarts", type=int, default=5, help="restarts of tritonserver allowed per window")
    p.add_argument("--restart-window", type=float, default=600.0, help="the window, in seconds")
    p.add_argument("--allow-benchmark", action="store_true", help="serve a benchmark-mode repository anyway")
    p.add_argument(
        "--upstream-http",
        help="front already running, restricted Triton replicas (HTTP host:port, comma-separated for several)",
    )
    p.add_argument(
        "--upstream-grpc", help="...and their gRPC host:port, same order; the key comes from $VEIL_GATEWAY_KEY"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.upstream_http or args.upstream_grpc:
        if not (args.upstream_http and args.upstream_grpc):
            p.error("--upstream-http and --upstream-grpc go together")
        stop = stop_on_signals()
        gateway = Gateway(
            args.upstream_http,
            args.upstream_grpc,
            host=args.host,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            upstream_key=os.environ.get("VEIL_GATEWAY_KEY"),
            client_id_source=args.client_id_source,
        )
        raise_fd_limit()
        gateway.start()
        print(f"Veil gateway: HTTP {gateway.http_url}, gRPC {gateway.grpc_url} -> {args.upstream_http}", flush=True)
        stop.wait()
        gateway.stop()
        return 0

    if args.build_dir:
        from veil.model_repository.writer import rewrite_repository

        out = Path(args.build_dir) / "production" / "model_repository"
        args.repository = rewrite_repository(args.build_dir, out, mode="production", variants=("veil",))
    if not args.repository:
        p.error("--repository, --build-dir or --upstream-http/--upstream-grpc is required")
    passed = ("host", "http_port", "grpc_port", "platform", "log_file", "client_id_source", "allow_benchmark")
    server = ProductionServer(
        args.repository,
        max_restarts=args.max_restarts,
        restart_window_s=args.restart_window,
        **{name: getattr(args, name) for name in passed},
    )

    code = serve(
        server,
        banner=lambda: (
            f"Veil gateway: HTTP {server.http_url}, gRPC {server.grpc_url} (only"
            f" '{server.gateway.model}'); tritonserver pid {server.triton.process.pid} on loopback; Ctrl-C stops both"
        ),
        step=restart_step(server.supervisor),
    )
    if code:
        print(server.triton.log_tail(), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
