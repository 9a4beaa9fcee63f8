"""Throwaway certificates for tests, the latency benchmark and trying TLS locally; never for production.

A CA, a server certificate for 127.0.0.1/localhost, and client certificates (valid, expired, or
signed by another CA), written as PEM files (keys mode 0600)::

    python -m veil.serving.devcerts build/dev-pki      # then --tls-cert build/dev-pki/veil-gateway.crt ...
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class _Ca:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    pair: Pair


def _write(folder: Path, stem: str, cert: x509.Certificate, key) -> Pair:
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return Pair(cert_path, key_path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, cn: str) -> _Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, cert sign, CRL sign
        .sign(key, hashes.SHA256())
    )
    return _Ca(_name(cn), key, _write(folder, cn.replace(" ", "-"), cert, key))


def issue(
    ca: _Ca, folder: Path, cn: str, *, server: bool = False, expired: bool = False, stem: str | None = None
) -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else (now, now)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(end if expired else now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write(folder, stem or cn, builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Pair
    server: Pair
    client: Pair
    expired: Pair
    untrusted: Pair


def make_pki(folder: Path, client_cn: str = "client-app") -> Pki:
    ca, rogue = make_ca(folder, "veil-test-ca"), make_ca(folder, "rogue-ca")
    return Pki(
        ca=ca.pair,
        server=issue(ca, folder, "veil-gateway", server=True),
        client=issue(ca, folder, client_cn),
        expired=issue(ca, folder, client_cn, expired=True, stem="expired"),
        untrusted=issue(rogue, folder, client_cn, stem="untrusted"),
    )


if __name__ == "__main__":
    import sys

    pki = make_pki(Path(sys.argv[1] if len(sys.argv) > 1 else "build/dev-pki"))
    for name in ("ca", "server", "client"):
        pair = getattr(pki, name)
        print(f"{name}: {pair.cert} {pair.key}")
