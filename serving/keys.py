"""``python -m veil.serving.keys``: add, revoke and list the gateway's API keys.

``add`` prints the new key once (the only line on stdout) and stores its salted hash; ``revoke``
marks a key revoked (the line stays, for the record); ``list`` shows ids, principals, limits and
state, never secrets. The file is rewritten atomically with mode 0600 under a lock, so a gateway
reloading it (SIGHUP; ``--hup PID`` sends it) never reads half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from veil.serving.auth import check_principal, load_keys, new_key
from veil.serving.limits import Quota


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[list[str]]:
    """The file's lines, to change in place; written back atomically (0600) on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        yield lines
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp creates it 0600
                f.write("".join(line + "\n" for line in lines))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def add(path: Path, principal: str, *, quota: dict[str, object], expires: str | None = None, note: str = "") -> str:
    """Store a new key's hash for ``principal``; returns the key (shown once, never stored)."""
    check_principal(principal)
    Quota(**quota)  # refuse bad limits before storing them
    key, key_id, salt, sha = new_key()
    record = {"id": key_id, "principal": principal, "salt": salt, "sha256": sha, "created": _now()}
    record.update({"expires": expires, "revoked": None, **quota})
    if note:
        record["note"] = note
    with _locked(path) as lines:
        if path.exists():
            load_keys(path, defaults=Quota())  # a broken file is not made worse
        lines.append(json.dumps(record))
    return key


def revoke(path: Path, key_id: str) -> bool:
    """Mark ``key_id`` revoked; False when there is no such live key."""
    found = False
    with _locked(path) as lines:
        for i, line in enumerate(lines):
            if line.strip() and not line.lstrip().startswith("#"):
                doc = json.loads(line)
                if doc.get("id") == key_id and doc.get("revoked") is None:
                    doc["revoked"] = _now()
                    lines[i] = json.dumps(doc)
                    found = True
    return found


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Manage the Veil gateway's API keys (a JSON Lines file of hashes)")
    p.add_argument("--file", required=True, type=Path, help="the key file the gateway reads (--keys-file)")
    p.add_argument("--hup", type=int, metavar="PID", help="send SIGHUP to the gateway afterwards (it reloads)")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="create a key for a principal and print it once")
    a.add_argument("--principal", required=True)
    a.add_argument("--rows-per-s", type=float, help="rows per second (0: unlimited; default: the gateway's)")
    a.add_argument("--burst", type=int, help="rows at once after a quiet spell")
    a.add_argument("--concurrent", type=int, help="requests in flight")
    a.add_argument("--max-sub-ids", type=int, help="caller-chosen client ids allowed under this principal")
    a.add_argument("--expires", help="ISO 8601 time after which the key is refused, e.g. 2027-01-01T00:00:00Z")
    a.add_argument("--note", default="")
    r = sub.add_parser("revoke", help="revoke a key by id (the part after 'veil_')")
    r.add_argument("key_id")
    sub.add_parser("list", help="ids, principals, limits and state (no secrets)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "add":
        names = ("rows_per_s", "burst", "concurrent", "max_sub_ids")
        quota = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        try:
            if args.expires:
                datetime.fromisoformat(args.expires.replace("Z", "+00:00"))
            key = add(args.file, args.principal, quota=quota, expires=args.expires, note=args.note)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(key, flush=True)
        print(f"stored key {key.split('_')[1]} for {args.principal}; the key is shown only now", file=sys.stderr)
    elif args.command == "revoke":
        if not revoke(args.file, args.key_id):
            print(f"error: no live key {args.key_id} in {args.file}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}", file=sys.stderr)
    else:
        for line in args.file.read_text(encoding="utf-8").splitlines() if args.file.exists() else ():
            if line.strip() and not line.lstrip().startswith("#"):
                doc = json.loads(line)
                expires = f"expires {doc.get('expires') or 'never'}"
                state = f"revoked {doc['revoked']}" if doc.get("revoked") else expires
                limits = {k: doc[k] for k in ("rows_per_s", "burst", "concurrent", "max_sub_ids") if k in doc}
                print(f"{doc['id']}  {doc['principal']:<24} {state:<32} {json.dumps(limits)}")
    if args.hup and args.command != "list":
        os.kill(args.hup, signal.SIGHUP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
