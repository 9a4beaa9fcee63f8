"""``python -m veil.serving.gateway``: serve veil_defended and nothing else."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from veil.serving.auth import AUTH_MODES, Authenticator
from veil.serving.frontdoor import AUDIT
from veil.serving.gateway import Gateway
from veil.serving.limits import Quota
from veil.serving.policy import CLIENT_ID_SOURCES
from veil.serving.production import ProductionServer
from veil.serving.supervisor import raise_fd_limit, restart_step, serve, stop_on_signals
from veil.serving.tls import TlsConfig

NO_AUTH_WARNING = """\
************************************************************************************************
WARNING: AUTHENTICATION IS OFF (--auth none). Anyone who can reach {where} may call the model,
callers choose their own client ids (rotating them resets adaptive intensity), and anonymous
callers share one state. For local use only: see docs/front-door.md for --keys-file and TLS.
************************************************************************************************"""


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
    p.add_argument("--upstream-key-file", type=Path, help="...or from this file (mode 0600), not the environment")
    door = p.add_argument_group("front door (docs/front-door.md)")
    door.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS and gRPC over TLS")
    door.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert (mode 0600)")
    door.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mTLS)")
    door.add_argument(
        "--auth",
        choices=AUTH_MODES,
        help="keys: API keys from --keys-file; mtls: the client certificate's common name; none: anonymous"
        " (default: keys with --keys-file, else none, which only a loopback --host allows)",
    )
    door.add_argument("--keys-file", type=Path, help="API key hashes, JSON Lines (python -m veil.serving.keys)")
    quota = Quota()
    door.add_argument("--rows-per-s", type=float, default=quota.rows_per_s, help="per principal, unless its key says")
    door.add_argument("--burst", type=int, default=quota.burst, help="rows at once per principal")
    door.add_argument("--concurrent", type=int, default=quota.concurrent, help="requests in flight per principal")
    door.add_argument("--audit-log", type=Path, help="append the audit lines here (default: stderr)")
    return p


def front_door(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[TlsConfig | None, Authenticator]:
    """TLS and authentication from the command line; refuses anonymous serving beyond loopback."""
    if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_client_ca and not args.tls_cert):
        p.error("--tls-cert and --tls-key go together, and --tls-client-ca needs them")
    mode = args.auth or ("keys" if args.keys_file else "none")
    if mode == "keys" and not args.keys_file:
        p.error("--auth keys needs --keys-file")
    if mode == "mtls" and not args.tls_client_ca:
        p.error("--auth mtls needs --tls-client-ca (and --tls-cert/--tls-key)")
    if mode == "none" and args.auth is None and not _loopback(args.host):
        p.error(f"serving {args.host} without authentication: pass --keys-file (or --auth mtls), or --auth none")
    try:
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        quota = Quota(rows_per_s=args.rows_per_s, burst=args.burst, concurrent=args.concurrent)
        auth = Authenticator(mode=mode, keys_file=args.keys_file if mode == "keys" else None, default_quota=quota)
    except (OSError, ValueError) as err:
        p.error(str(err))
    return tls, auth


def audit_to(path: Path | None) -> None:
    """The audit lines go to ``path`` (appended), else to stderr."""
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    AUDIT.addHandler(handler)
    AUDIT.setLevel(logging.INFO)
    AUDIT.propagate = False


def announce(auth: Authenticator, tls: TlsConfig | None, where: str) -> None:
    """Say what the front door checks; loudly when it checks nothing."""
    if not auth.enabled:
        print(NO_AUTH_WARNING.format(where=where), file=sys.stderr, flush=True)
    else:
        keys = f", {len(auth.keys)} live keys from {auth.keys_file}" if auth.mode == "keys" else ""
        print(f"authentication: {auth.mode}{keys}; SIGHUP reloads the key file", file=sys.stderr, flush=True)
    if tls is None:
        print("TLS is off: requests and keys travel in clear text", file=sys.stderr, flush=True)


def reload_on_sighup(gateway: Gateway) -> None:
    def reload(*_: object) -> None:
        print(f"SIGHUP: {gateway.reload()}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGHUP, reload)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def upstream_key(p: argparse.ArgumentParser, path: Path | None) -> str | None:
    """The running Triton's inference key: from a file only its user can read, else $VEIL_GATEWAY_KEY."""
    if path is None:
        return os.environ.get("VEIL_GATEWAY_KEY")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        p.error(f"{path} is readable by other users: chmod 600 it")
    return path.read_text().strip()


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    tls, auth = front_door(p, args)
    audit_to(args.audit_log)
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
            upstream_key=upstream_key(p, args.upstream_key_file),
            client_id_source=args.client_id_source,
            tls=tls,
            auth=auth,
        )
        raise_fd_limit()
        reload_on_sighup(gateway)
        gateway.start()
        announce(auth, tls, f"{gateway.http_url} and {gateway.grpc_url}")
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
    from veil.model_repository.writer import stale_warning

    if warning := stale_warning(args.repository):
        print(warning, file=sys.stderr, flush=True)
    passed = ("host", "http_port", "grpc_port", "platform", "log_file", "client_id_source", "allow_benchmark")
    server = ProductionServer(
        args.repository,
        max_restarts=args.max_restarts,
        restart_window_s=args.restart_window,
        tls=tls,
        auth=auth,
        **{name: getattr(args, name) for name in passed},
    )
    reload_on_sighup(server.gateway)

    def banner() -> str:
        announce(auth, tls, f"{server.http_url} and {server.grpc_url}")
        return (
            f"Veil gateway: HTTP {server.http_url}, gRPC {server.grpc_url} (only '{server.gateway.model}');"
            f" tritonserver pid {server.triton.process.pid} on loopback; Ctrl-C stops both"
        )

    code = serve(
        server,
        banner=banner,
        step=restart_step(server.supervisor),
    )
    if code:
        print(server.triton.log_tail(), file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
