"""TLS on both gateway listeners: certificate and key from files, optionally client certificates (mTLS).

One :class:`TlsConfig` gives the aiohttp listener an :class:`ssl.SSLContext` and the gRPC listener
``grpc.ssl_server_credentials``; with ``client_ca`` set, both refuse a handshake without a client
certificate signed by that CA and still valid (an expired or untrusted certificate never reaches a
handler), and the certificate's subject common name can name the caller (``--auth mtls``).
Certificates are read at start-up; rotating them is a restart (the API keys reload on SIGHUP).
"""

from __future__ import annotations

import ssl
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    """PEM certificate chain of the gateway (leaf first)."""
    key: Path
    """PEM private key (should be readable by the gateway's user only)."""
    client_ca: Path | None = None
    """PEM CA bundle: when set, every caller must present a certificate it signed (mTLS)."""

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None:
                object.__setattr__(self, name, Path(path))
                if not Path(path).is_file():
                    raise ValueError(f"TLS {name.replace('_', ' ')} file {path} does not exist")
        mode = self.key.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(
                f"WARNING: the TLS private key {self.key} is readable by other users (mode {stat.S_IMODE(mode):o});"
                " chmod 600 it",
                file=sys.stderr,
                flush=True,
            )

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def server_context(self) -> ssl.SSLContext:
        """For the HTTP listener (TLS 1.2 or later)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            ctx.load_verify_locations(cafile=self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For the gRPC listener."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )


def http_subject(transport) -> str | None:
    """The verified client certificate's subject common name on an HTTP connection, if any."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def grpc_subject(context) -> str | None:
    """The verified client certificate's subject common name on a gRPC call, if any."""
    names = context.auth_context().get("x509_common_name") or ()
    return names[0].decode("utf-8", "replace") if names else None
