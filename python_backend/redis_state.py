"""Adaptive-intensity state in Redis: shared by every defense instance and Triton replica.

One Lua script per dynamic batch (redis-py ``register_script``: EVALSHA, one round trip) runs the
computation of :class:`~veil.python_backend.adaptive.ThreatTracker` on the server: same formulas,
same order of operations, IEEE doubles on both sides, so the threats are the in-process ones
(tested). A script runs atomically, so concurrent instances never interleave inside a batch.

Keys (``<prefix>`` is ``veil:`` by default; use a database of its own):

- ``<prefix>c:<client id>``: one string, six little-endian doubles (rate, dup, last, born, initial,
  rows; exact, no decimal round trip) then the ring: the client's last ``fingerprints`` signatures
  as little-endian int32 (``MEMORY USAGE`` 3640 bytes with a full ring). Native expiry ``ttl_s``
  after the last request (the in-process TTL sweep); the script also treats an entry idle for
  longer than ``ttl_s`` as absent, exactly as the sweep does.
- ``<prefix>anon``: anonymous rows' shared state and the unattributed signature ring;
  ``<prefix>churn``: the new-id rate. Both without expiry (fixed size).

Time is Redis's own clock (``TIME``), one for every replica. Memory is bounded by the server's
``maxmemory`` with ``maxmemory-policy volatile-lru``: only client entries carry a TTL, so the least
recently used clients are evicted first (as the in-process LRU does at ``max_clients``) and the
two shared keys never are; an evicted client comes back young, i.e. more protected. ``max_clients``
itself applies to the in-process backend only.

Down or slow: connect and read time out after ``timeout_s`` (50 ms), no client retries; the batch
gets :data:`~veil.python_backend.threat_state.FALLBACK_THREAT` and the store is left alone for a
backoff (0.1 s doubling to ``max_backoff_s``) before the next try: a dead Redis costs a batch at
most one timeout per backoff, and the defense recovers on the first batch that gets an answer.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Sequence

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from veil.python_backend.adaptive import ANONYMOUS, AdaptiveConfig
from veil.python_backend.fingerprint import CONTAINED_SHARE, EMPTY, MINHASH_SIZE, NEAR_MATCH, SIGNATURE_SIZE
from veil.python_backend.threat_state import FALLBACK_THREAT, Observed, StateConfig, register


def entry_bytes(fingerprints: int) -> int:
    """Redis memory of one client entry with a full ring of ``fingerprints`` rows, at most (its
    value plus a quarter and 512 bytes: ``MEMORY USAGE`` measured by
    ``tests/python_backend/test_threat_state.py``), for the ``veil_tracked_clients_bytes`` gauge."""
    return int(1.25 * (48 + 4 * SIGNATURE_SIZE * fingerprints)) + 512


SHARED_KEYS = 2
HEAD_FIELDS = ("rate", "dup", "last", "born", "initial", "rows")

# Mirrors ThreatTracker.observe / _update and fingerprint.repeats line by line; keep them in step (the equivalence test
# compares them on random streams). KEYS[1] churn, KEYS[2] anon, KEYS[2 + r] request r's client
# (KEYS[2] again for anonymous rows); ARGV[1] now ('' = the server's clock), ARGV[2] the step's
# seconds per row, ARGV[2 + r] request r's signatures. Returns each request's threat (%.17g: exact) and DBSIZE.
_SCRIPT = """
local RATE_W, DUP_W, SPAN, TTL = {rate_window_s!r}, {duplicate_window_s!r}, {duplicate_span_rows!r}, {ttl_s!r}
local RATE_LO, RATE_HI, DUP_LO, DUP_HI = {rate_low!r}, {rate_high!r}, {duplicate_low!r}, {duplicate_high!r}
local BUSY_LO, BUSY_HI = {busy_low!r}, {busy_high!r}
local CHURN_LO, CHURN_HI = {churn_low!r}, {churn_high!r}
local SLOTS, YOUNG_ROWS, YOUNG_S, YOUNG_T = {fingerprints!r}, {young_rows!r}, {young_s!r}, {young_threat!r}
local SIG, MINHASH, NEAR, TTL_MS = {signature_size}, {minhash_size}, {near_match}, {ttl_ms}
local SHARE, EMPTY = {contained_share!r}, {empty}
local W = 4 * SIG

local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local COST = tonumber(ARGV[2])

local function decay(v, dt, w)
  if dt < 0 then dt = 0 end
  return v * math.exp(-dt / w)
end
local function ramp(x, lo, hi) return math.min(1.0, math.max(0.0, (x - lo) / (hi - lo))) end

local UNPACK = '<' .. string.rep('i4', SIG)
-- a row: its bytes (to store it back) and its SIG values (to compare)
local function split(bytes)
  local out = {{}}
  for r = 0, #bytes / W - 1 do
    local row = {{struct.unpack(UNPACK, bytes, r * W + 1)}}
    row[SIG + 1] = string.sub(bytes, r * W + 1, r * W + W)
    out[#out + 1] = row
  end
  return out
end
local function near(a, b)
  local same = 0
  for j = 1, MINHASH do if a[j] == b[j] then same = same + 1 end end
  return same >= NEAR
end
-- the sketch values of a row (EMPTY left out) into the set `seen`
local function add(seen, row)
  for j = MINHASH + 1, SIG do if row[j] ~= EMPTY then seen[row[j]] = true end end
end
-- fingerprint.repeats(sig, ring).sum(): rows that are a near-duplicate of a ring row or an
-- earlier row, or whose sketch is contained (share >= SHARE) in theirs
local function repeat_count(sig, ring)
  local count = 0
  local seen = {{}}
  for _, r in ipairs(ring) do add(seen, r) end
  for i = 1, #sig do
    local hit = false
    for _, r in ipairs(ring) do if near(sig[i], r) then hit = true break end end
    if not hit then for j = 1, i - 1 do if near(sig[i], sig[j]) then hit = true break end end end
    if not hit then
      local size, found = 0, 0
      for j = MINHASH + 1, SIG do
        local v = sig[i][j]
        if v ~= EMPTY then
          size = size + 1
          if seen[v] then found = found + 1 end
        end
      end
      hit = size > 0 and found / size >= SHARE
    end
    if hit then count = count + 1 end
    add(seen, sig[i])
  end
  return count
end
local function push(ring, sig)
  for _, row in ipairs(sig) do ring[#ring + 1] = row end
  while #ring > SLOTS do table.remove(ring, 1) end
end

local HEAD = '<dddddd'  -- rate, dup, last, born, initial, rows; then the ring
local function load(key)
  local v = redis.call('GET', key)
  if not v then return nil end
  local rate, dup, last, born, initial, rows = struct.unpack(HEAD, v)
  return {{rate = rate, dup = dup, last = last, born = born, initial = initial, rows = rows,
          ring = split(string.sub(v, 49))}}
end
local function fresh(initial)
  return {{rate = 0.0, dup = 0.0, last = now, born = now, initial = initial, rows = 0, ring = {{}}}}
end
local function packed(s)
  local ring = {{}}
  for i, row in ipairs(s.ring) do ring[i] = row[SIG + 1] end
  return struct.pack(HEAD, s.rate, s.dup, s.last, s.born, s.initial, s.rows) .. table.concat(ring)
end

local function update(s, sig)
  local dt = now - s.last
  s.last = now
  local n = #sig
  s.rows = s.rows + n
  s.rate = decay(s.rate, dt, RATE_W) + n / RATE_W
  local repeats = 0
  if n > 0 then repeats = repeat_count(sig, s.ring) end
  push(s.ring, sig)
  local keep = (1.0 - 1.0 / SPAN) ^ n
  local share = 0.0
  if n > 0 then share = repeats / n end
  s.dup = decay(s.dup, dt, DUP_W) * keep + (1 - keep) * share
  return math.max(ramp(s.rate, RATE_LO, RATE_HI), ramp(s.rate * COST, BUSY_LO, BUSY_HI), ramp(s.dup, DUP_LO, DUP_HI),
                  decay(s.initial, now - s.born, RATE_W))
end

local churn, churn_last = 0.0, now
local c = redis.call('GET', KEYS[1])
if c then churn, churn_last = struct.unpack('<dd', c) end
local anon = load(KEYS[2]) or fresh(0.0)
local clients, order, out, anon_used = {{}}, {{}}, {{}}, false
for r = 3, #KEYS do
  local key, sig = KEYS[r], split(ARGV[r])
  local s, young
  if key == KEYS[2] then
    s = anon
    young = true
  else
    s = clients[key]
    if s == nil then
      s = load(key)
      if s ~= nil and now - s.last > TTL then s = nil end
      if s == nil then
        churn = decay(churn, now - churn_last, RATE_W) + 1.0 / RATE_W
        churn_last = now
        s = fresh(ramp(churn, CHURN_LO, CHURN_HI))
      end
      clients[key] = s
      order[#order + 1] = key
    end
    young = s.rows < YOUNG_ROWS or now - s.born < YOUNG_S
  end
  local threat = update(s, sig)
  if s == anon then anon_used = true end
  if young then
    threat = math.max(threat, YOUNG_T)
    if s ~= anon then
      anon_used = true
      local hits = 0.0
      if #sig > 0 then hits = repeat_count(sig, anon.ring) / #sig end
      push(anon.ring, sig)
      threat = math.max(threat, ramp(hits, DUP_LO, DUP_HI))
    end
  end
  out[#out + 1] = string.format('%.17g', threat)
end
for _, key in ipairs(order) do redis.call('SET', key, packed(clients[key]), 'PX', TTL_MS) end
if anon_used then redis.call('SET', KEYS[2], packed(anon)) end
redis.call('SET', KEYS[1], struct.pack('<dd', churn, churn_last))
out[#out + 1] = redis.call('DBSIZE')
return out
"""


def lua_source(adaptive: AdaptiveConfig) -> str:
    """The script with ``adaptive``'s numbers written in (``repr``: Lua reads them back exactly)."""
    if adaptive.fingerprints < 1:
        raise ValueError("the Redis state backend needs fingerprints >= 1")
    numbers = {k: float(v) if isinstance(v, float) else v for k, v in vars(adaptive).items()}
    return _SCRIPT.format(
        **numbers,
        signature_size=SIGNATURE_SIZE,
        minhash_size=MINHASH_SIZE,
        near_match=NEAR_MATCH,
        contained_share=float(CONTAINED_SHARE),
        empty=EMPTY,
        ttl_ms=max(1, int(np.ceil(adaptive.ttl_s * 1000))),
    )


class Reconnect:
    """When to try the store again after a failure: 0.1 s, doubling per failure up to ``max_s``."""

    def __init__(self, *, first_s: float = 0.1, max_s: float = 2.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.failures = 0
        self.retry_at = 0.0
        self.error = ""

    def waiting(self, now: float) -> bool:
        return self.failures > 0 and now < self.retry_at

    def failed(self, now: float, error: str) -> None:
        self.retry_at = now + min(self.max_s, self.first_s * 2**self.failures)
        self.failures += 1
        self.error = error

    def succeeded(self) -> None:
        self.failures = 0
        self.error = ""


@register("redis")
class RedisState:
    """The state in a Redis server (see the module docstring); ``observe`` never raises for the store."""

    shared = True

    def __init__(
        self, *, config: StateConfig, adaptive: AdaptiveConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self.client = redis.Redis.from_url(
            config.url,
            socket_timeout=config.timeout_s,
            socket_connect_timeout=config.timeout_s,
            retry=Retry(NoBackoff(), 0),  # no client-side retries: the fallback answers instead
        )
        self.script = self.client.register_script(lua_source(adaptive))
        self.keys = (config.key_prefix + "churn", config.key_prefix + "anon")
        self.reconnect = Reconnect(max_s=config.max_backoff_s)
        self.keys_seen = 0
        self.entry_bytes = entry_bytes(adaptive.fingerprints)

    def key(self, client: str) -> str:
        return self.keys[1] if client == ANONYMOUS else f"{self.config.key_prefix}c:{client}"

    def observe(
        self, batch: Sequence[tuple[str, np.ndarray]], *, now: float | None = None, row_cost_s: float = 0.0
    ) -> Observed:
        if not batch:
            return Observed([])
        if self.reconnect.waiting(self.clock()):
            return Observed([FALLBACK_THREAT] * len(batch), fallback=True)
        keys = [*self.keys, *(self.key(client) for client, _ in batch)]
        args = ["" if now is None else repr(float(now)), repr(float(row_cost_s))]
        args += [np.ascontiguousarray(sig, dtype="<i4").tobytes() for _, sig in batch]
        try:
            reply = self.script(keys=keys, args=args)
            threats = [float(t) for t in reply[:-1]]
            if len(threats) != len(batch):
                raise ValueError(f"the state script answered {len(threats)} threats for {len(batch)} requests")
        except Exception as err:  # down, slow, full, or anything else: never fail the request for it
            self.reconnect.failed(self.clock(), f"{type(err).__name__}: {err}")
            return Observed([FALLBACK_THREAT] * len(batch), fallback=True)
        self.reconnect.succeeded()
        self.keys_seen = int(reply[-1])
        return Observed(threats)

    def peek(self, client: str) -> dict[str, float] | None:
        """A client's stored state (operators and tests; raises if the store does not answer)."""
        raw = self.client.get(self.key(client))
        if raw is None:
            return None
        values = struct.unpack_from("<6d", raw)
        return {**dict(zip(HEAD_FIELDS, values, strict=True)), "ring_rows": (len(raw) - 48) // (4 * SIGNATURE_SIZE)}

    def tracked(self) -> int:
        return max(0, self.keys_seen - SHARED_KEYS)

    def memory_bytes(self) -> int:
        return self.tracked() * self.entry_bytes

    def problem(self) -> str | None:
        if not self.reconnect.failures:
            return None
        where = self.client.connection_pool.connection_kwargs
        return (
            f"adaptive state store {where.get('host', where.get('path'))}:{where.get('port', '')} unreachable"
            f" ({self.reconnect.error}); serving threat {FALLBACK_THREAT:g}"
        )

    def close(self) -> None:
        self.client.close()
