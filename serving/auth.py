"""Who is calling: API keys from an operator-managed file, or the client certificate's subject (mTLS).

An API key is ``veil_<id>_<secret>``: the id finds the key's record, and the secret is checked
against a salted SHA-256 hash with :func:`hmac.compare_digest`. The file stores only hashes (the
CLI, :mod:`veil.serving.keys`, prints a new key once). SHA-256 rather than scrypt: the secret is 256
random bits, so a fast hash cannot be searched, and the check runs on every request (scrypt's
deliberate ~50 ms would be the gateway's throughput). Every failure (no key, malformed, unknown id,
wrong secret, revoked, expired) gets the same answer, 401 / UNAUTHENTICATED; only the audit log
says which it was.

The key file is JSON Lines, one key per line (``#`` comments and blank lines allowed)::

    {"id": "3f9a0c1b2d4e", "principal": "alice", "salt": "<hex>", "sha256": "<hex>",
     "created": "2026-11-02T10:00:00Z", "expires": null, "revoked": null,
     "rows_per_s": 100, "burst": 512, "concurrent": 8, "max_sub_ids": 0}

Quota fields left out take the gateway's defaults. :meth:`Authenticator.reload` (SIGHUP) swaps
the whole table at once; a file that does not parse leaves the old table in place.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

from veil.serving.limits import Quota
from veil.serving.validation import CallerError

AUTH_MODES = ("keys", "mtls", "none")
KEY_PREFIX = "veil"
PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
"""Principal names: no ``/`` (it separates a principal's sub-ids) and no ``:`` (``peer:`` ids)."""
_KEY = re.compile(rf"{KEY_PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{32,128}})")
_QUOTA_FIELDS = tuple(f.name for f in fields(Quota))
UNAUTHENTICATED = "authentication required: send a valid API key as 'authorization: Bearer <key>'"
"""The one answer to every key failure (the caller learns nothing about which part was wrong)."""
BAD_CERTIFICATE = "the client certificate's subject common name is not a usable principal name"


class Unauthenticated(CallerError):
    def __init__(self, reason: str, message: str = UNAUTHENTICATED) -> None:
        super().__init__(message, status=401, reason=f"unauthenticated: {reason}")


@dataclass(frozen=True)
class Identity:
    """An authenticated caller: ``principal`` keys its adaptive state and its limits."""

    principal: str
    quota: Quota
    key_id: str | None = None


@dataclass(frozen=True)
class KeyRecord:
    id: str
    principal: str
    salt: str
    sha256: str
    quota: Quota
    expires: float | None = None
    """Unix time after which the key is refused."""

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(digest(self.salt, secret), self.sha256)


def digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str, str]:
    """A fresh key: ``(key, id, salt, sha256)``; only the last three are ever stored."""
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    return f"{KEY_PREFIX}_{key_id}_{secret}", key_id, salt, digest(salt, secret)


def check_principal(name: str) -> str:
    if not PRINCIPAL.fullmatch(name):
        raise ValueError(f"principal {name[:80]!r} must match {PRINCIPAL.pattern} (letters, digits, . _ @ -)")
    return name


def _time(value: object, what: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be an ISO 8601 time or null")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_record(line: str, *, defaults: Quota) -> tuple[KeyRecord, bool]:
    """One line of the key file: ``(record, live)`` (``live`` False when revoked)."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("each line must be a JSON object")
    for name in ("id", "principal", "salt", "sha256"):
        if not isinstance(doc.get(name), str):
            raise ValueError(f"'{name}' must be a string")
    if not re.fullmatch(r"[0-9a-f]{12}", doc["id"]) or not re.fullmatch(r"[0-9a-f]{64}", doc["sha256"]):
        raise ValueError("'id' must be 12 and 'sha256' 64 lowercase hex digits")
    bytes.fromhex(doc["salt"])
    quota = {k: doc[k] for k in _QUOTA_FIELDS if doc.get(k) is not None}
    record = KeyRecord(
        id=doc["id"],
        principal=check_principal(doc["principal"]),
        salt=doc["salt"],
        sha256=doc["sha256"],
        quota=Quota(**{**{k: getattr(defaults, k) for k in _QUOTA_FIELDS}, **quota}),
        expires=_time(doc.get("expires"), "'expires'"),
    )
    _time(doc.get("revoked"), "'revoked'")
    return record, doc.get("revoked") is None


def load_keys(path: Path, *, defaults: Quota) -> dict[str, KeyRecord]:
    """Every live key of the file by id; ``ValueError`` names the first bad line."""
    table: dict[str, KeyRecord] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            record, live = parse_record(line, defaults=defaults)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}, line {number}: {err}") from None
        if record.id in table:
            raise ValueError(f"{path}, line {number}: key id {record.id} appears twice")
        if live:
            table[record.id] = record
    return table


class Authenticator:
    """Turns what a caller presents into an :class:`Identity` (or 401), and its caller-chosen id
    into the client id the adaptive state is keyed by."""

    def __init__(
        self,
        *,
        mode: str,
        keys_file: str | Path | None = None,
        default_quota: Quota | None = None,
        max_client_id_bytes: int = 256,
        clock=time.time,
    ) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {AUTH_MODES}")
        if (mode == "keys") != (keys_file is not None):
            raise ValueError("a key file goes with --auth keys, and only with it")
        self.mode, self.keys_file, self.default_quota = mode, keys_file, default_quota or Quota()
        self.max_client_id_bytes, self.clock = max_client_id_bytes, clock
        self.keys: dict[str, KeyRecord] = {}
        self.sub_ids: dict[str, set[str]] = {}
        """Caller-chosen ids seen per principal (bounded by each key's ``max_sub_ids``)."""
        if mode == "keys":
            self.reload()

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def reload(self) -> str:
        """Re-read the key file (atomically: on any error the old keys stay); returns a summary."""
        if self.mode != "keys":
            return f"no key file (auth mode {self.mode})"
        table = load_keys(Path(self.keys_file), defaults=self.default_quota)
        self.keys = table
        principals = {r.principal for r in table.values()}
        for gone in set(self.sub_ids) - principals:
            del self.sub_ids[gone]
        return f"{len(table)} live keys for {len(principals)} principals from {self.keys_file}"

    def principals(self) -> set[str]:
        return {r.principal for r in self.keys.values()}

    def authenticate(self, authorization: str | None, subject: str | None) -> Identity:
        if self.mode == "none":
            raise RuntimeError("authenticate() with auth off")
        if self.mode == "mtls":
            if subject is None or not PRINCIPAL.fullmatch(subject):
                raise Unauthenticated("certificate subject unusable", BAD_CERTIFICATE)
            return Identity(subject, self.default_quota)
        if not authorization:
            raise Unauthenticated("no key")
        scheme, _, token = authorization.strip().partition(" ")
        match = _KEY.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
        if match is None:
            raise Unauthenticated("malformed key")
        record = self.keys.get(match["id"])
        if record is None:
            digest("00", match["secret"])  # about the same work as a known id: no timing hint
            raise Unauthenticated(f"unknown or revoked key {match['id']}")
        if not record.matches(match["secret"]):
            raise Unauthenticated(f"wrong secret for key {record.id}")
        if record.expires is not None and self.clock() >= record.expires:
            raise Unauthenticated(f"expired key {record.id}")
        return Identity(record.principal, record.quota, record.id)

    def client_id(self, identity: Identity, sent: str | None) -> str:
        """The adaptive state's key: the principal, or ``principal/sub`` for a caller-chosen
        (canonical) id when the key allows sub-ids; new ones beyond the bound are refused (403),
        so ids cannot be rotated, and no id reaches outside its principal."""
        quota = identity.quota
        if sent is None or not quota.max_sub_ids:
            return identity.principal
        full = f"{identity.principal}/{sent}"
        if len(full.encode()) > self.max_client_id_bytes:
            raise CallerError(f"client id is longer than {self.max_client_id_bytes} bytes with the principal")
        seen = self.sub_ids.setdefault(identity.principal, set())
        if sent not in seen:
            if len(seen) >= quota.max_sub_ids:
                raise CallerError(
                    f"this key may name at most {quota.max_sub_ids} client ids ('veil-client-id'); reuse one",
                    status=403,
                    reason="too-many-client-ids",
                )
            seen.add(sent)
        return full
