"""Adaptive intensity: a per-client threat score from query patterns scales the perturbation.

Membership attacks need many queries, often bursts of near-identical ones (the same text, or
small edits of it, probed repeatedly). Each client's recent row rate, the share of the serving
step's time its rows take (its *busy share*: the rate in units of the hardware), and its share of
repeated queries (a near-duplicate of one of its recent queries by MinHash, or a query whose content
tokens are mostly contained in its recent queries: crops of one text; see :mod:`fingerprint`)
raise a threat score in [0, 1]; the defense maps it to an intensity
multiplier on epsilon and a lower risk target.

State is bounded: at most ``max_clients`` entries (least recently seen evicted first), and
entries idle for ``ttl_s`` are swept on every call (the table is in last-seen order, so the sweep
only touches expired entries). A client id seen for the first time is *young* (fewer than
``young_rows`` rows or ``young_s`` seconds): it has no history of its own, so its threat is at
least ``young_threat``, higher when many new ids appear quickly (the *churn* threat: an attacker
rotating ids), and its rows also go through the shared ring of unattributed signatures, so
near-duplicates of anyone's recent unattributed queries count against it (content, not rate).
Anonymous rows share one state (all anonymous callers look like one caller) and are always
young. So probing one text under rotating ids is caught as if it were sent anonymously, going
anonymous never yields less protection than a young id gets, and an established id's threat
depends on its own traffic and the step's measured cost only: no other caller's state enters it.
The cost (:class:`ServiceCost`) is a server-wide running average, so other callers' load moves it
(merged batches lower it, contention raises it) and with it the busy share of a caller already
near ``busy_low``: that coupling is known and open (a start-up probe would make the cost a
constant of the hardware). Another caller's rate never changes a young caller's threat. What rotating ids
still buy is rate: a flood of distinct texts under fresh ids gets the churn threat, not the rate
threat (authenticated principals, not caller-chosen ids, close that).

This tracker is the in-process state (one table per process). :mod:`threat_state` puts it behind
the state-backend interface next to the Redis backend (:mod:`redis_state`), which computes the same
threats from state shared by every instance and replica.
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from veil.python_backend.fingerprint import SIGNATURE_SIZE, logit_signature, repeats
from veil.wire import canonical_client_id

ANONYMOUS = ""


@dataclass(frozen=True)
class AdaptiveConfig:
    max_clients: int = 10_000
    ttl_s: float = 900.0
    rate_window_s: float = 2.0
    """Time constant of the decaying row rate (and of the new-id churn rate)."""
    duplicate_span_rows: int = 32
    """The near-duplicate share is an exponential average over about this many recent rows."""
    duplicate_window_s: float = 60.0
    """...and fades with this time constant while the client is idle."""
    rate_low: float = 20.0
    """Rows per second a client may send with no rate threat."""
    rate_high: float = 200.0
    """Rows per second at which the rate threat is 1."""
    busy_low: float = 0.5
    busy_high: float = 1.0
    """The busy threat ramps from 0 to 1 as a client's *busy share* goes from ``busy_low`` to
    ``busy_high``: its row rate times the step's own measured seconds per row
    (:class:`ServiceCost`), i.e. the share of one instance's time its rows take. Rows per second
    mean little without the hardware: on 2 CPU cores the evaluation's back-to-back caller never
    reached a coarser level when a row cost two forward passes (part models), and reached one
    for about half its rows with one; on a GPU the same caller passes ``rate_high``. A caller
    that keeps the step busy half the time or more is bulk traffic; full speed reads about 1
    whatever the hardware (a stated rule, not tuned on any seed)."""
    duplicate_low: float = 0.2
    duplicate_high: float = 0.25
    """The probing threat ramps from 0 to 1 as the repeated share goes from ``duplicate_low`` to
    ``duplicate_high``. Chosen on the development seed with ``fingerprints`` and the artifact's
    mask (``python -m veil.privacy.tune_adaptive``): of the (ring, mask, ramp) triples whose benign
    streams (SST-2 and AG News, random and one-topic order) were served no coarser than under the
    previous 32 rows, no mask, (0.1, 0.5), the one that served the most third-crops interleaved
    over 30 texts at label-only level: 128 rows, mask, (0.2, 0.25), 93% of rows (32 rows without
    the mask and (0.2, 0.3): 56%; (0.1, 0.5): 1%). (0.25 is the grid's steepest end.)"""
    fingerprints: int = 128
    """Recent query signatures kept per client (a ring): several crops of each of many interleaved
    texts. Long rings need the artifact's mask (``DefenseArtifact.tracker_common``): without it
    containment in the union of 64 or 128 rows flags distinct texts on one topic too (13-93% of
    benign rows served coarser than the floor on the development seed, against 0.1-0.2% with it
    or at 32 rows)."""
    churn_low: float = 5.0
    churn_high: float = 100.0
    """New client ids per second: churn threat 0 at ``churn_low``, 1 at ``churn_high``."""
    max_multiplier: float = 2.0
    """Intensity at threat 1 (1 at threat 0)."""
    max_client_id_bytes: int = 256
    young_rows: int = 32
    young_s: float = 6.0
    """An id is young until it has sent this many rows and is this old: enough history of its own
    for the duplicate share and the rate to mean something."""
    young_threat: float = 0.25
    """The least threat of a young id and of anonymous rows."""


def _ramp(x: float, lo: float, hi: float) -> float:
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


class ClientState:
    __slots__ = ("born", "dup", "initial", "last", "rate", "ring", "rows", "slots")

    def __init__(self, now: float, initial: float, slots: int) -> None:
        self.rows = 0
        self.rate = 0.0
        self.dup = 0.0
        self.last = now
        self.born = now
        self.initial = initial
        self.ring = np.zeros((0, SIGNATURE_SIZE), dtype=np.int32)
        self.slots = slots

    def nbytes(self) -> int:
        return sys.getsizeof(self) + self.slots * SIGNATURE_SIZE * 4 + 112


class ThreatTracker:
    """Per-client threat scores; ``observe`` updates state and returns the threat per row."""

    def __init__(self, config: AdaptiveConfig = AdaptiveConfig(), *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.clients: OrderedDict[str, ClientState] = OrderedDict()
        self.churn = 0.0
        self.churn_last = clock()
        self.evicted = 0
        self.unattributed = ClientState(self.churn_last, 0.0, config.fingerprints)
        """Every anonymous row: one shared state, outside the LRU table and never evicted."""
        self.expired = 0
        self._entry_bytes = ClientState(0.0, 0.0, config.fingerprints).nbytes() + sys.getsizeof("x" * 32) + 100

    def __len__(self) -> int:
        return len(self.clients)

    def _decay(self, value: float, dt: float, window: float | None = None) -> float:
        return value * math.exp(-max(dt, 0.0) / (window or self.config.rate_window_s))

    def sweep(self, now: float) -> int:
        """Drop every entry idle for longer than ``ttl_s``; returns how many went."""
        gone = 0
        while self.clients:
            key, state = next(iter(self.clients.items()))
            if now - state.last <= self.config.ttl_s:
                break
            del self.clients[key]
            gone += 1
        self.expired += gone
        return gone

    def _get(self, client_id: str, now: float) -> ClientState:
        cfg = self.config
        if client_id == ANONYMOUS:
            return self.unattributed
        state = self.clients.get(client_id)
        if state is None:
            self.churn = self._decay(self.churn, now - self.churn_last) + 1.0 / cfg.rate_window_s
            self.churn_last = now
            initial = _ramp(self.churn, cfg.churn_low, cfg.churn_high)
            state = ClientState(now, initial, cfg.fingerprints)
            self.clients[client_id] = state
            while len(self.clients) > cfg.max_clients:
                self.clients.popitem(last=False)
                self.evicted += 1
        else:
            self.clients.move_to_end(client_id)
        return state

    def observe(
        self,
        client_id: str,
        logits: np.ndarray,
        signatures: np.ndarray | None = None,
        *,
        now: float | None = None,
        row_cost_s: float = 0.0,
    ) -> float:
        """Record one request's rows for ``client_id`` and return its threat in [0, 1].

        ``signatures`` [n, SIGNATURE_SIZE] come from the tokenizer; without them the logits are
        fingerprinted instead (exact repeats only). ``now`` defaults to the clock (a dynamic batch
        passes one time for all its requests). ``row_cost_s``: the serving step's seconds per row
        (:class:`ServiceCost`; 0: no busy threat)."""
        cfg = self.config
        now = self.clock() if now is None else now
        self.sweep(now)
        state = self._get(client_id, now)
        young = client_id == ANONYMOUS or state.rows < cfg.young_rows or now - state.born < cfg.young_s
        sig = query_signature(logits, signatures)
        threat = self._update(state, now, sig, row_cost_s)
        if young:
            threat = max(threat, cfg.young_threat)
            if state is not self.unattributed:
                # Content, not rate: a young id's rows also meet everyone's recent unattributed rows
                # in the shared near-duplicate ring, so probing one text under rotating ids is
                # caught, while another caller's rate or probing of other texts changes nothing.
                shared = self.unattributed
                hits = repeats(sig, shared.ring).mean() if len(sig) else 0.0
                shared.ring = np.concatenate([shared.ring, sig])[-shared.slots :]
                threat = max(threat, _ramp(float(hits), cfg.duplicate_low, cfg.duplicate_high))
        return float(threat)

    def _update(self, state: ClientState, now: float, sig: np.ndarray, row_cost_s: float) -> float:
        """Fold ``sig`` (one request's rows) into ``state``; the state's threat afterwards."""
        cfg = self.config
        dt = now - state.last
        state.last = now
        n = len(sig)
        state.rows += n
        state.rate = self._decay(state.rate, dt) + n / cfg.rate_window_s
        repeated = int(repeats(sig, state.ring).sum()) if n else 0
        state.ring = np.concatenate([state.ring, sig])[-state.slots :]
        # Repeat share: exponential average over recent rows, fading while idle.
        keep = (1.0 - 1.0 / cfg.duplicate_span_rows) ** n
        share = repeated / n if n else 0.0
        state.dup = self._decay(state.dup, dt, cfg.duplicate_window_s) * keep + (1 - keep) * share
        return max(
            _ramp(state.rate, cfg.rate_low, cfg.rate_high),
            _ramp(state.rate * row_cost_s, cfg.busy_low, cfg.busy_high),
            _ramp(state.dup, cfg.duplicate_low, cfg.duplicate_high),
            self._decay(state.initial, now - state.born),
        )

    def multiplier(self, threat: float) -> float:
        return 1.0 + (self.config.max_multiplier - 1.0) * threat

    def memory_bytes(self) -> int:
        """O(1) estimate for the hot path: entries times one entry with a 32-character id."""
        return len(self.clients) * self._entry_bytes

    def measure_bytes(self) -> int:
        """O(n) measurement of the table (for tests and reports, not the hot path)."""
        table = sum(sys.getsizeof(k) + s.nbytes() + 100 for k, s in self.clients.items())
        return table + self.unattributed.nbytes()

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "churn": self.churn,
            "evicted": self.evicted,
            "unattributed": _state_to_dict(self.unattributed),
            "clients": {k: _state_to_dict(s) for k, s in self.clients.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.churn = float(state["churn"])
        self.evicted = int(state["evicted"])
        self.clients.clear()
        for k, v in state["clients"].items():
            self.clients[k] = _state_from_dict(v, self.config.fingerprints)
        if "unattributed" in state:
            self.unattributed = _state_from_dict(state["unattributed"], self.config.fingerprints)


class ServiceCost:
    """The serving step's seconds per row: an average weighted by rows over about ``span_rows``
    recent rows (0 until the first batch), for the busy share (``AdaptiveConfig.busy_low``). It
    measures the step where it runs, so the same caller reads busier on slower hardware."""

    def __init__(self, *, span_rows: int = 256) -> None:
        self.span_rows = span_rows
        self.per_row = 0.0
        self.rows = 0

    def add(self, seconds: float, rows: int) -> None:
        if rows <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        keep = (1.0 - 1.0 / self.span_rows) ** rows if self.rows else 0.0
        self.per_row = self.per_row * keep + (1.0 - keep) * seconds / rows
        self.rows += rows


def _state_to_dict(s: ClientState) -> dict:
    return {
        "rate": s.rate,
        "dup": s.dup,
        "last": s.last,
        "born": s.born,
        "initial": s.initial,
        "rows": s.rows,
        "ring": s.ring.tolist(),
    }


def _state_from_dict(v: dict, slots: int) -> ClientState:
    s = ClientState(float(v["last"]), float(v["initial"]), slots)
    s.rate, s.dup, s.born = float(v["rate"]), float(v["dup"]), float(v["born"])
    s.rows = int(v.get("rows", 0))
    ring = np.asarray(v["ring"], dtype=np.int32)
    # A ring saved with another signature width (an older release) is dropped, not misread.
    s.ring = ring if ring.ndim == 2 and ring.shape[1] == SIGNATURE_SIZE else np.zeros((0, SIGNATURE_SIZE), np.int32)
    return s


def query_signature(logits: np.ndarray, signatures: np.ndarray | None) -> np.ndarray:
    """[n, SIGNATURE_SIZE] int32: the tokenizer's signatures, else the logits' fallback fingerprint."""
    return np.asarray(signatures if signatures is not None else logit_signature(logits), dtype=np.int32)


def normalise_client_id(raw: object, *, max_bytes: int) -> str:
    """The caller's id as the defense keys its state: absent is anonymous; otherwise the one
    spelling of :func:`veil.wire.canonical_client_id` (``ValueError`` for the caller's mistakes)."""
    if raw is None:
        return ANONYMOUS
    return canonical_client_id(raw, max_bytes=max_bytes, allow_peer=True)
