"""The front door both proxies share: who the caller is, the client id it gets, its limits, the audit.

With authentication on (:class:`~veil.serving.auth.Authenticator`), the adaptive state is keyed by
the principal: the gateway sets the ``veil-client-id`` it forwards from the principal (``alice``,
or ``alice/<sub>`` for a key that allows sub-ids) and drops the caller's parameter, so no caller can
reach another principal's state, and there is no anonymous bucket. With it off (local use), ids
come from the caller or the peer address as before (:func:`veil.serving.policy.client_id`).

Every request the gateway refuses is one line on the ``veil.audit`` logger: principal (or
``unauthenticated`` / ``anonymous``), reason, route, protocol, peer; never the body or the message
(messages can quote the request).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

from veil.serving import policy
from veil.serving.auth import Authenticator, Identity
from veil.serving.guards import Admission
from veil.serving.limits import RowLimiter
from veil.serving.policy import Limits
from veil.serving.validation import CallerError
from veil.wire import canonical_client_id

AUDIT = logging.getLogger("veil.audit")


class FrontDoor:
    def __init__(
        self,
        *,
        auth: Authenticator | None,
        admission: Admission,
        client_id_source: str,
        limits: Limits,
        rows: RowLimiter | None = None,
    ) -> None:
        self.auth = auth if auth is not None and auth.enabled else None
        self.admission, self.client_id_source, self.limits = admission, client_id_source, limits
        self.rows = rows or RowLimiter()
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.auth is not None

    def identify(self, authorization: str | None, subject: str | None) -> Identity | None:
        """The caller's identity (None with auth off); raises 401 ``Unauthenticated``."""
        return self.auth.authenticate(authorization, subject) if self.auth is not None else None

    def client_id(
        self, identity: Identity | None, header: str | None, parameter: str | None, peer: str | None
    ) -> tuple[str | None, bool]:
        """``(id, drop_parameter)``: the ``veil-client-id`` header to send upstream (None: the
        caller's canonical parameter stands), and whether to remove the caller's parameter."""
        try:
            if identity is None:
                source = self.client_id_source
                return policy.client_id(
                    source, header, parameter is not None, peer, max_bytes=self.limits.max_client_id_bytes
                ), False
            sent = parameter
            if header is not None:
                sent = canonical_client_id(header, max_bytes=self.limits.max_client_id_bytes)
            return self.auth.client_id(identity, sent), True
        except ValueError as err:
            if isinstance(err, CallerError):
                raise
            raise CallerError(str(err)) from None

    @contextlib.contextmanager
    def admit(self, identity: Identity | None, caller: str, rows: int) -> Iterator[None]:
        """A slot in flight (per principal with auth on, else per client id), then the rows."""
        if identity is None:
            with self.admission.slot(caller):
                yield
            return
        with self.admission.slot(identity.principal, identity.quota.concurrent):
            self.rows.take(identity.principal, rows, identity.quota)
            yield

    def reload(self) -> str:
        """Re-read the key file (SIGHUP); on error the old keys stay and the error is the answer."""
        if self.auth is None:
            return "authentication is off: nothing to reload"
        try:
            summary = self.auth.reload()
        except (OSError, ValueError) as err:
            AUDIT.error("veil-audit reload-failed error=%s (the previous keys stay)", err)
            return f"reload failed, the previous keys stay: {err}"
        self.rows.forget(self.auth.principals())
        AUDIT.warning("veil-audit reloaded %s", summary)
        return summary

    def audit(
        self, identity: Identity | None, err: CallerError, *, route: str, protocol: str, peer: str | None
    ) -> None:
        self.refused += 1
        if identity is not None:
            who = f"principal={json.dumps(identity.principal)} key={identity.key_id or '-'}"
        else:
            who = "principal=unauthenticated" if self.enabled else "principal=anonymous"
        AUDIT.warning(
            "veil-audit refused %s reason=%s status=%s route=%s protocol=%s peer=%s",
            who,
            json.dumps(err.reason),
            err.status,
            json.dumps(route[:200]),
            protocol,
            policy.peer_host(peer),
        )
