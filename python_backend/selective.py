"""Veil's selective defense: move only member outputs, onto what a comparable non-member gets.

Why this shape (measured in the first round): a per-class level set collapses every output onto
one point per class and leaves the probabilities less useful than the label; a plain clamp beats
it. Outputs expose membership because members' outputs are sharper than non-members' *of the same
class and correctness*. So:

1. **Gate** (:mod:`member_index`): the defender knows its training set; a query whose token set
   is (nearly) a training text's (MinHash candidates, scored by their content sketches) is moved,
   with weight ``m`` ramping from 0 to 1 over the Jaccard similarity ``gate``. A *partial match*
   (the query's content words all in one training text, a crop of it, or holding all of one, the
   text padded) is moved too, with weight ramping over the overlap coefficient ``partial_gate``,
   through its own map (below). Every other output keeps its information.
2. **Map**: a moved row's top-class log-odds ``s`` goes through the class- and
   correctness-conditional quantile map from the training members (all of them: the member side
   is then exact ranks) to calibration non-members (correctness from the member's own label), so
   members' ``(label, correct, s)`` has the non-members' distribution, and easy members stay
   easier than hard ones (the rank is kept). Linear tails beyond the tables keep it continuous.
   A partial match goes through the same kind of map fitted on the defender's own crops: crops of
   training texts (those the partial gate recognises) to crops of calibration non-members, so a
   member's crop answers like a non-member's crop (chosen on the development seed; measured in
   docs/evaluation.md, "Partial matches") A whole match that is *not* an exact
   copy of its training text (the token sequence differs: a word deleted, swapped or repeated)
   goes through a third map, fitted on the defender's own edits of training texts onto its edits
   of calibration non-members (:func:`veil.python_backend.calibrate.fit_near`): an edit is a little
   less confident than its text, so the copies' map sent it low while its label stayed, a tell
   that non-members' edits do not have (docs/evaluation.md, "An edit-fitted map for near copies").
   When the build trained leave-out part models (``veil-build --leave-out 2``) and the step has
   the query's tokens, a whole match (a copy or a near copy of training text ``i``) skips the maps:
   it is answered by the part model that never trained on ``i``, on the query's own tokens, its
   score moved onto this model's non-member scale (:mod:`veil.export.leave_out`). The quantile
   maps make the members' *marginal* the non-members', but a per-example attack (LiRA) compares
   each row with reference models that never saw it; one model per text for the copy and every
   near copy keeps the family consistent (a copy answered alone disagreed with its own edits:
   docs/evaluation.md, "Leave-out scores for copies").
3. **Serve**: the score is placed on ``K`` equal-mass bins of the calibration non-members' scores
   of its class, and the bin is served at its *calibrated* confidence (Laplace-smoothed accuracy
   of the calibration non-members in the bin, shrunk towards the class's accuracy and made
   monotone by pool-adjacent-violators), with the
   other classes in the raw order and a fixed tail profile (for C > 2 the ranking is kept, its
   magnitudes carry nothing). ``K`` is the knob: the fewer levels, the less any estimation error
   of the map can show, and the less a probing caller can read; at ``K = 1`` the output is
   calibrated label-only. The served bytes are a function of (label, class order, bin) only: no
   float residue of the raw logits or their offset.
4. **Threat** (adaptive intensity): at level ``q`` in [0, 1], ``K = 2 ** round(log2(coarse_levels) * (1 - q))``
   (nested partitions: a coarser level is a function of a finer one);
   ``q`` is the calibrated floor (the default operating point), raised by the caller's threat for
   the adaptive variant. A probing caller is pushed towards label-only; the threat depends only on
   the caller's own query pattern, never on membership.

The label is the raw argmax (first on ties) for every finite logit vector and is kept by
construction: ``p_label`` is floored just above what the tail's largest share could reach.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from veil.python_backend.fingerprint import NO_SEQUENCE, minhash, sketch
from veil.python_backend.member_index import PARTIAL_MIN_SHARED, MemberIndex

LEVELS = np.linspace(0.0, 1.0, 201)
MAP_KINDS = ("whole", "near", "partial")
S_MAX = 60.0
"""Top log-odds are clipped to +-S_MAX (float64 sigmoid is 1 - 1e-26 there): finite for every input."""
PRIOR_ROWS = 2.0
MIN_ROWS = 10
"""A (class, correctness) group with fewer calibration rows on either side keeps the identity map."""


HeldOut = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``held_out(rows, parts)`` -> [n, C] logits of leave-out part model ``parts[j]`` on batch row
``rows[j]``'s tokens; ``parts[j]`` is -1 for a row that matches no training text wholly (any part
model's answer, or NaN: it is discarded; :func:`defend` asks for every row, so a gated row costs
what any other does). A row it cannot answer (logits sent without tokens) is NaN and goes through
the maps."""


def class_log_odds(logits: np.ndarray, c: int) -> np.ndarray:
    """[B] log(p_c / (1 - p_c)) = z_c - logsumexp(z_other), in float64 (finite, no cancellation)."""
    z = np.asarray(logits, dtype=np.float64)
    others = np.delete(z, c, axis=1)
    m = others.max(1)
    return np.clip(z[:, c] - m - np.log(np.exp(others - m[:, None]).sum(1)), -S_MAX, S_MAX)


def top_log_odds(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[B, C] float32 -> (label [B] = argmax, first on ties; s [B] = z_label - logsumexp(z_other)),
    in float64 from max-subtracted logits, so the result does not depend on a common offset beyond
    float32's own rounding of the input, and is finite for every finite input."""
    z = np.asarray(logits, dtype=np.float32)
    label = z.argmax(1)
    x = z.astype(np.float64)
    x = x - x.max(1, keepdims=True)  # exact for float32 inputs, the label's entry is 0
    b = np.arange(len(x))
    others = x.copy()
    others[b, label] = -np.inf
    with np.errstate(divide="ignore"):
        lse = np.log(np.exp(others).sum(1))  # -inf when every other class is infinitely far
    s = np.clip(-lse, -S_MAX, S_MAX)
    return label.astype(np.int64), s


def _monotone(q: np.ndarray) -> np.ndarray:
    q = np.maximum.accumulate(np.asarray(q, dtype=np.float64))
    return q + np.arange(len(q)) * 1e-12  # strictly increasing for np.interp


def quantile_map(s: np.ndarray, member_q: np.ndarray, nonmember_q: np.ndarray) -> np.ndarray:
    """Member score -> the non-member score at the same quantile, linear beyond the tables' ends
    (slope of the outer 5%, clipped to [0, 1] so the map never sharpens)."""
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    qm, qn = _monotone(member_q), _monotone(nonmember_q)
    return _map_rows(s, np.broadcast_to(qm, (len(s), len(qm))), np.broadcast_to(qn, (len(s), len(qn))))


def interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp(x[i], xp[i], fp[i])`` for every row ``i`` at once ([B] x, [B, L] increasing
    ``xp`` and its ``fp``), by numpy's own formula, with the same work for every value: a row's
    latency must not depend on where its score falls (or on which table it uses)."""
    n = xp.shape[1]
    j = (xp <= x[:, None]).sum(1) - 1  # numpy's search: xp[j] <= x < xp[j + 1]
    at = np.clip(j, 0, n - 2)
    r = np.arange(len(x))
    x0, x1, y0, y1 = xp[r, at], xp[r, at + 1], fp[r, at], fp[r, at + 1]
    out = (y1 - y0) / (x1 - x0) * (x - x0) + y0
    out = np.where(x0 == x, y0, out)
    out = np.where(j < 0, fp[:, 0], out)
    return np.where(j >= n - 1, fp[:, -1], out)


def _map_rows(s: np.ndarray, qm: np.ndarray, qn: np.ndarray) -> np.ndarray:
    """:func:`quantile_map` of each score ``s[i]`` by its own strictly increasing tables ``qm[i]``,
    ``qn[i]`` ([B, len(LEVELS)]): one expression for the whole batch, whatever its groups."""
    levels = np.broadcast_to(LEVELS, qm.shape)
    out = interp_rows(interp_rows(s, qm, levels), levels, qn)
    k = 5
    slope_hi = np.clip((qn[:, -1] - qn[:, -1 - k]) / np.maximum(qm[:, -1] - qm[:, -1 - k], 1e-9), 0.0, 1.0)
    slope_lo = np.clip((qn[:, k] - qn[:, 0]) / np.maximum(qm[:, k] - qm[:, 0], 1e-9), 0.0, 1.0)
    out = np.where(s > qm[:, -1], qn[:, -1] + (s - qm[:, -1]) * slope_hi, out)
    return np.where(s < qm[:, 0], qn[:, 0] + (s - qm[:, 0]) * slope_lo, out)


@dataclass
class SelectiveTables:
    """Everything the selective defense fitted on calibration rows (JSON-serialisable)."""

    num_classes: int
    member_q: list[list[list[float]]]
    """[class][0 correct, 1 wrong] training members' score quantiles at :data:`LEVELS` ([] = too few)."""
    nonmember_q: list[list[list[float]]]
    nonmember_sorted: list[list[float]]
    """Per predicted class, calibration non-members' scores, sorted (the bins)."""
    nonmember_correct: list[list[bool]]
    """Per predicted class, whether each of those rows was predicted correctly (same order)."""
    tail_profile: list[float]
    """C - 1 strictly decreasing shares of 1 - p_label, by the raw order of the other classes."""
    gate: tuple[float, float] = (0.5, 0.75)
    coarse_levels: int = 64
    partial_member_q: list[list[list[float]]] = field(default_factory=list)
    """Like ``member_q``, for the defender's crops of training texts ([] = no partial-match map:
    an artifact built before it, or no crops given)."""
    partial_nonmember_q: list[list[list[float]]] = field(default_factory=list)
    near_member_q: list[list[list[float]]] = field(default_factory=list)
    """Like ``member_q``, for the defender's edits of training texts that the gate matches but
    that are not copies ([] = no near-copy map: every whole match goes through ``member_q``)."""
    near_nonmember_q: list[list[list[float]]] = field(default_factory=list)
    leave_out_q: list[list[list[float]]] = field(default_factory=list)
    """Per class [part models' quantiles, this model's] of the log-odds of that class on calibration
    non-members this model predicts as it: moves a part model's score onto this model's scale
    ([] for a class: too few rows, the part models' scale kept; [] in all: no part models)."""
    partial_gate: tuple[float, float] = (0.75, 1.0)
    """Overlap coefficient with the closest training text at which a partial match's weight starts
    rising from 0, and reaches 1."""
    partial_min_shared: int = PARTIAL_MIN_SHARED
    """Content values a partial match shares with its training text, at least."""
    intensity_floor: float = 0.0
    """The knob: every row is served at level max(floor, caller's threat), with :meth:`bin_count` bins.
    0 = most useful, 1 = calibrated label-only. Chosen on calibration rows (see :mod:`calibrate`)."""
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.coarse_levels < 1 or self.coarse_levels & (self.coarse_levels - 1):
            raise ValueError(f"coarse_levels must be a power of two, got {self.coarse_levels}")
        self._bins: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        # The fitted lists as the arrays each batch needs, made once (a batch of one row otherwise
        # spends most of its time converting 201-entry lists).
        self._maps: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray] | None] = {}
        self._stack: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._tail = np.asarray(self.tail_profile, dtype=np.float64)

    def to_json(self) -> dict:
        d = asdict(self)
        d["gate"] = list(self.gate)
        d["partial_gate"] = list(self.partial_gate)
        return d

    @classmethod
    def from_json(cls, d: dict) -> SelectiveTables:
        d = dict(d)
        d["gate"] = tuple(d["gate"])
        if "partial_gate" in d:
            d["partial_gate"] = tuple(d["partial_gate"])
        return cls(**d)

    def bins(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ``c``: (``coarse_levels - 1`` inner edges in score units, confidences ``[L + 1,
        coarse_levels]``: row ``h`` is each finest bin's served confidence after ``h`` halvings).

        Edges are the calibration non-members' score quantiles. At each level a cell's confidence
        is its rows' accuracy shrunk towards the class's, made non-decreasing by pool-adjacent-
        violators; the next level's cells are unions of this level's *pooled groups* (each group
        joins the dyadic parent of its first bin), so every level's output is a function of any
        finer level's output, pooling included."""
        hit = self._bins.get(c)
        if hit is not None:
            return hit
        k = self.coarse_levels
        ref = np.asarray(self.nonmember_sorted[c], dtype=np.float64)
        ok = np.asarray(self.nonmember_correct[c], dtype=np.float64)
        edges = np.quantile(ref, np.arange(1, k) / k) if len(ref) else np.zeros(k - 1)
        fine = np.searchsorted(edges, ref, side="right")
        n = np.bincount(fine, minlength=k).astype(np.float64)
        hits = np.bincount(fine, weights=ok, minlength=k)
        prior = (ok.sum() + 1) / (len(ok) + 2)
        rows = []
        cell = np.arange(k)  # the cell (its first finest bin) each finest bin belongs to at this level
        width = 1
        for _ in range(int(np.log2(k)) + 1):
            ids = np.unique(cell)
            cn = np.array([n[cell == i].sum() for i in ids])
            ch = np.array([hits[cell == i].sum() for i in ids])
            conf = _pav((ch + PRIOR_ROWS * prior) / (cn + PRIOR_ROWS), cn + PRIOR_ROWS)
            per_bin = conf[np.searchsorted(ids, cell)]
            rows.append(per_bin)
            # Pooled groups (equal confidence, contiguous) join the dyadic parent of their first bin.
            first = np.r_[True, per_bin[1:] != per_bin[:-1]]
            start = np.maximum.accumulate(np.where(first, np.arange(k), 0))
            width *= 2
            cell = (start // width) * width
        out = (edges, np.stack(rows))
        self._bins[c] = out
        return out

    def level(self, threat: np.ndarray | None, *, adaptive: bool, knob: float | None = None) -> np.ndarray:
        """The served intensity level per row: the knob if one is set, else the calibrated floor,
        raised by the caller's threat for adaptive variants; quantised to 1/100."""
        if knob is not None:
            q = np.full(1 if threat is None else len(threat), float(knob))
        else:
            t = np.zeros(1) if threat is None or not adaptive else np.asarray(threat, dtype=np.float64)
            q = np.maximum(t, self.intensity_floor)
        return np.round(np.clip(q, 0.0, 1.0) * 100) / 100

    def member_weight(self, similarity: np.ndarray) -> np.ndarray:
        return _ramp(similarity, self.gate)

    def partial_weight(self, overlap: np.ndarray) -> np.ndarray:
        return _ramp(overlap, self.partial_gate)

    @property
    def has_partial(self) -> bool:
        return bool(self.partial_member_q)

    @property
    def has_near(self) -> bool:
        return bool(self.near_member_q)

    @property
    def has_leave_out(self) -> bool:
        return bool(self.leave_out_q)

    def held_out_scores(self, logits: np.ndarray, label: np.ndarray) -> np.ndarray:
        """[n] a part model's log-odds of each row's ``label``, on this model's non-member scale."""
        out = np.empty(len(label))
        for c in np.unique(label):
            rows = label == c
            own = class_log_odds(np.asarray(logits)[rows], int(c))
            q = self.leave_out_q[int(c)]
            out[rows] = quantile_map(own, np.asarray(q[0]), np.asarray(q[1])) if q else own
        return out

    def _map(self, c: int, k: int, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Group (class ``c``, 0 correct / 1 wrong) of map ``kind`` (:data:`MAP_KINDS`): its monotone
        quantile tables, None if too few rows. A near-copy group too small to fit is the copies' map."""
        key = (c, k, kind)
        if key not in self._maps:
            mq, nq = {
                "whole": (self.member_q, self.nonmember_q),
                "partial": (self.partial_member_q, self.partial_nonmember_q),
                "near": (self.near_member_q, self.near_nonmember_q),
            }[kind]
            if mq and mq[c][k] and nq[c][k]:
                self._maps[key] = (_monotone(mq[c][k]), _monotone(nq[c][k]))
            else:
                self._maps[key] = self._map(c, k, "whole") if kind == "near" else None
        return self._maps[key]

    def _stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every map's tables, stacked [kind (:data:`MAP_KINDS`), class, 0 correct / 1 wrong, L],
        member and non-member sides, and [kind, class, 0 / 1] whether the group has a map (else
        identity; its rows still go through a stand-in table, so every row does the same work)."""
        if self._stack is None:
            shape = (len(MAP_KINDS), self.num_classes, 2)
            qm, qn = np.tile(LEVELS, (*shape, 1)), np.tile(LEVELS, (*shape, 1))
            present = np.zeros(shape, dtype=bool)
            for index in np.ndindex(shape):
                kind, c, k = index
                tables = self._map(c, k, MAP_KINDS[kind])
                if tables is not None and len(tables[0]) == len(tables[1]) == len(LEVELS):
                    qm[index], qn[index], present[index] = tables[0], tables[1], True
            self._stack = (qm, qn, present)
        return self._stack

    def map_kinds(self, s: np.ndarray, label: np.ndarray, correct: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`map_members` of the same scores by several maps (``correct`` per kind), in one
        pass: the defense step maps every row by every map whether it is matched or not (a
        matched row must not take longer), so the pass is paid once."""
        unknown = set(correct) - set(MAP_KINDS)
        if unknown:
            raise ValueError(f"map kind must be one of {MAP_KINDS}, got {sorted(unknown)!r}")
        qm, qn, present = self._stacked()
        s = np.asarray(s, dtype=np.float64).reshape(-1)
        label = np.asarray(label, dtype=np.int64).reshape(-1)
        kinds = list(correct)
        group = (
            np.repeat([MAP_KINDS.index(k) for k in kinds], len(s)),
            np.tile(label, len(kinds)),
            np.concatenate([~np.asarray(correct[k], dtype=bool).reshape(-1) for k in kinds]).astype(np.int64),
        )
        every = np.tile(s, len(kinds))
        mapped = np.where(present[group], _map_rows(every, qm[group], qn[group]), every)
        return dict(zip(kinds, np.split(mapped, len(kinds)), strict=True))

    def map_members(self, s: np.ndarray, label: np.ndarray, correct: np.ndarray, *, kind: str = "whole") -> np.ndarray:
        """Scores of rows matching a training text (``correct``: the row's label is that text's)
        -> the non-member side's at the same quantile, by map ``kind``: "whole" (copies of the
        text), "near" (whole matches that are not copies), "partial". Every row does the same
        work, whatever its group (a group without a map keeps the score)."""
        return self.map_kinds(s, label, {kind: correct})[kind]

    def bin_count(self, level: np.ndarray) -> np.ndarray:
        """Bins per class at each intensity level: ``2 ** round(log2(coarse_levels) * (1 - q))``.
        Powers of two, so every coarser partition is a union of the finer ones' bins (equal-mass
        quantile edges nest): an output at any level is a function of the output at the floor,
        and a caller who reads or moves its own level learns nothing the floor does not give."""
        q = np.clip(np.asarray(level, dtype=np.float64), 0.0, 1.0)
        return (2 ** np.rint(np.log2(self.coarse_levels) * (1.0 - q))).astype(np.int64)

    def confidence(self, s: np.ndarray, label: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Each row's served confidence: its score's finest bin, at its level's row of the table."""
        halvings = np.log2(self.coarse_levels).astype(int) - np.log2(self.bin_count(level)).astype(int)
        out = np.empty(len(s))
        for c in sorted(set(label.tolist())):  # the classes present in the batch
            sel = label == c
            edges, table = self.bins(c)
            out[sel] = table[halvings[sel], np.searchsorted(edges, s[sel], side="right")]
        return out

    def probabilities(self, label: np.ndarray, top: np.ndarray, order: np.ndarray) -> np.ndarray:
        """The served vector from (label, confidence, class order): float64 construction, one cast."""
        b, c = len(label), self.num_classes
        tail = self._tail
        # The label keeps the largest share: p_label > (1 - p_label) * tail[0], with a margin.
        top = np.maximum(np.asarray(top, dtype=np.float64), tail[0] / (1.0 + tail[0]) + 1e-3)
        p = np.empty((b, c))
        p[np.arange(b), label] = top
        for rank in range(c - 1):
            p[np.arange(b), order[:, rank]] = (1.0 - top) * tail[rank]
        return p.astype(np.float32)


def _ramp(x: np.ndarray, gate: tuple[float, float]) -> np.ndarray:
    lo, hi = gate
    return np.clip((np.asarray(x, dtype=np.float64) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted pool-adjacent-violators: the closest non-decreasing sequence."""
    blocks: list[list[float]] = []  # [value, weight, count]
    for v, wt in zip(y.tolist(), w.tolist(), strict=True):
        blocks.append([v, wt, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.concatenate([np.full(n, v) for v, _, n in blocks])


def class_order(logits: np.ndarray, label: np.ndarray) -> np.ndarray:
    """[B, C - 1] the other classes by raw logit, descending (ties: lower index first)."""
    z = np.asarray(logits, dtype=np.float64)
    b = np.arange(len(z))
    z = z.copy()
    z[b, label] = np.inf
    order = np.argsort(-z, axis=1, kind="stable")
    return order[:, 1:]


@dataclass
class SelectiveResult:
    probabilities: np.ndarray
    labels: np.ndarray
    member_weight: np.ndarray
    score_before: np.ndarray
    score_after: np.ndarray
    confidence: np.ndarray
    partial_weight: np.ndarray
    near: np.ndarray
    """Rows whose whole match went through the near-copy map (matched, not a copy)."""
    left_out: np.ndarray
    """Whole matches answered by their training text's leave-out part model (``held_out``)."""


@dataclass(frozen=True)
class Lookup:
    """What the member index says of each row of a batch: a function of the queries' tokens alone
    (signatures and sequence hashes, no logits), so the defense step computes it while the
    classifier runs (:func:`look_up`; the hosted adapter overlaps the two)."""

    weight: np.ndarray
    """Whole-match weight (the Jaccard gate's ramp); 1 for every row in the no-gate ablation."""
    member_label: np.ndarray | None
    """The closest training text's label (-1: none); None in the no-gate ablation (each row's own label)."""
    matched: np.ndarray
    """The closest training text of a whole match (-1: none)."""
    partial: np.ndarray
    """Partial-match weight, 0 where a whole match outweighs it."""
    partial_label: np.ndarray
    near_ok: np.ndarray | None
    """Rows whose sequence hash is known and is no training text's (a whole match there is a near
    copy); None when the build or the request has no sequence hashes (whole matches are copies)."""

    def __len__(self) -> int:
        return len(self.weight)

    def take(self, rows: np.ndarray) -> Lookup:
        """The look-up of a subset of the batch's rows (an index array or a mask: requests that
        failed after it was made)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Lookup(**{k: None if v is None else v[rows] for k, v in values.items()})

    def parts(self, index: MemberIndex | None) -> np.ndarray:
        """[rows] the leave-out part model that answers each row: the one that never trained on its
        whole match's text, -1 for a row without one (or an index without parts)."""
        if index is None or not index.has_parts:
            return np.full(len(self), -1, dtype=np.int64)
        return np.where(self.matched >= 0, index.parts[np.maximum(self.matched, 0)], -1)


def look_up(
    tables: SelectiveTables,
    *,
    index: MemberIndex | None,
    signatures: np.ndarray | None,
    sequences: np.ndarray | None,
    rows: int,
    gated: bool = True,
) -> Lookup:
    """The member index's answer for ``rows`` queries (:class:`Lookup`); every row does the same
    work, matched or not (docs/defense.md, "Equal work")."""
    b = rows
    partial, partial_label = np.zeros(b), np.full(b, -1)
    matched = np.full(b, -1, dtype=np.int64)
    member_label: np.ndarray | None
    if not gated:  # every row treated as a correctly predicted member (the no-gate ablation)
        weight, member_label = np.ones(b), None
    elif index is not None and signatures is not None and len(index):
        sketches = sketch(signatures)
        sim, matched = index.nearest_rows(minhash(signatures), sketches=sketches)
        member_label = index.labels_of(matched)
        weight = tables.member_weight(sim)
        if tables.has_partial and sketches is not None and index.sketches is not None:
            overlap, partial_label = index.partial(sketches, min_shared=tables.partial_min_shared)
            partial = tables.partial_weight(overlap) * (weight < 1)
    else:
        weight, member_label = np.zeros(b), np.full(b, -1)
    near_ok = None
    if sequences is not None and tables.has_near and index is not None and index.has_sequences:
        seq = np.asarray(sequences, dtype=np.int64).reshape(b)
        near_ok = (seq != NO_SEQUENCE) & (index.copy_of(seq) < 0)
    return Lookup(weight, member_label, matched, partial, partial_label, near_ok)


def defend(
    logits: np.ndarray,
    tables: SelectiveTables,
    *,
    index: MemberIndex | None,
    signatures: np.ndarray | None,
    threat: np.ndarray | None,
    gated: bool = True,
    sequences: np.ndarray | None = None,
    held_out: HeldOut | None = None,
    lookup: Lookup | None = None,
) -> SelectiveResult:
    """The selective defense on a [B, C] batch (see the module docstring). ``sequences``: each
    query's token-sequence hash (:func:`~veil.python_backend.fingerprint.sequence_hash`); a whole
    match whose hash is no training text's goes through the near-copy map. Without them (or
    :data:`~veil.python_backend.fingerprint.NO_SEQUENCE`) a whole match is served as a copy.
    ``held_out``: the leave-out part models on the batch's tokens (:data:`HeldOut`); with an index
    and tables that have them, every whole match is answered by its text's part model.
    ``lookup``: :func:`look_up` of these rows made beforehand (then ``signatures``, ``sequences``
    and ``gated`` are not read); the bytes are the same either way."""
    label, s = top_log_odds(logits)
    b = len(label)
    if lookup is None:
        lookup = look_up(tables, index=index, signatures=signatures, sequences=sequences, rows=b, gated=gated)
    elif len(lookup) != b:
        raise ValueError(f"look-up of {len(lookup)} rows for a batch of {b}")
    weight, matched, partial, partial_label = lookup.weight, lookup.matched, lookup.partial, lookup.partial_label
    member_label = label if lookup.member_label is None else lookup.member_label
    # Every map on every row, matched or not, in one pass (masks choose below): a gated row must
    # not take longer than any other (its latency would say it is a member).
    correct = member_label == label
    maps = tables.map_kinds(
        s,
        label,
        {"whole": correct}
        | ({"near": correct} if tables.has_near else {})
        | ({"partial": partial_label == label} if tables.has_partial else {}),
    )
    served = s.copy()
    if tables.has_partial:  # partial matches first; a (near-)whole match outweighs them
        served = np.where(partial > 0, (1.0 - partial) * s + partial * maps["partial"], s)
    moved = weight > 0
    near = np.zeros(b, dtype=bool)
    left_out = np.zeros(b, dtype=bool)
    if held_out is not None and index is not None and index.has_parts and tables.has_leave_out:
        # Every row asked and mapped, matched or not (masks choose): equal work, as for the maps.
        z_k = np.asarray(held_out(np.arange(b), lookup.parts(index)), dtype=np.float32).reshape(b, -1)
        finite = np.isfinite(z_k).all(1)
        mapped = tables.held_out_scores(np.where(finite[:, None], z_k, 0.0), label)
        left_out = moved & (matched >= 0) & finite
        served = np.where(left_out, (1.0 - weight) * served + weight * mapped, served)
    rest = moved & ~left_out
    if lookup.near_ok is not None:
        near = rest & lookup.near_ok
    for rows, kind in ((rest & ~near, "whole"), (near, "near")):
        if kind in maps:
            served = np.where(rows, (1.0 - weight) * served + weight * maps[kind], served)
    level = np.zeros(b) if threat is None else np.broadcast_to(np.asarray(threat, dtype=np.float64), (b,))
    top = tables.confidence(served, label, level)
    probs = tables.probabilities(label, top, class_order(logits, label))
    return SelectiveResult(probs, label, weight, s, served, top, partial, near, left_out)


def quantile_tables(
    member_logits: np.ndarray, member_labels: np.ndarray, nonmember_logits: np.ndarray, nonmember_labels: np.ndarray
) -> tuple[list, list]:
    """Per class, per (correct, wrong): both sides' score quantiles at :data:`LEVELS` ([] = too few)."""
    lm, sm = top_log_odds(member_logits)
    ln, sn = top_log_odds(nonmember_logits)
    cm = lm == np.asarray(member_labels)
    cn = ln == np.asarray(nonmember_labels)
    member_q, nonmember_q = [], []
    for c in range(np.asarray(member_logits).shape[1]):
        mq, nq = [], []
        for sel_m, sel_n in ((cm, cn), (~cm, ~cn)):
            a, b = sm[(lm == c) & sel_m], sn[(ln == c) & sel_n]
            ok = len(a) >= MIN_ROWS and len(b) >= MIN_ROWS
            mq.append(np.quantile(a, LEVELS).tolist() if ok else [])
            nq.append(np.quantile(b, LEVELS).tolist() if ok else [])
        member_q.append(mq)
        nonmember_q.append(nq)
    return member_q, nonmember_q


def fit_tables(
    *,
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
    gate: tuple[float, float] = (0.5, 0.75),
    coarse_levels: int = 64,
    partial_gate: tuple[float, float] = (0.75, 1.0),
) -> SelectiveTables:
    """Fit every table: ``member_*`` are the training members (all of them, ideally), ``nonmember_*``
    the defender's calibration non-members. The partial-match map is fitted apart (it needs the
    member index: :func:`veil.python_backend.calibrate.calibrate`); until then there is none."""
    member_q, nonmember_q = quantile_tables(member_logits, member_labels, nonmember_logits, nonmember_labels)
    ln, sn = top_log_odds(nonmember_logits)
    cn = ln == np.asarray(nonmember_labels)
    num_classes = np.asarray(member_logits).shape[1]
    nonmember_sorted, nonmember_correct = [], []
    for c in range(num_classes):
        order = np.argsort(sn[ln == c], kind="stable")
        nonmember_sorted.append(sn[ln == c][order].tolist())
        nonmember_correct.append(cn[ln == c][order].tolist())
    return SelectiveTables(
        num_classes=num_classes,
        member_q=member_q,
        nonmember_q=nonmember_q,
        nonmember_sorted=nonmember_sorted,
        nonmember_correct=nonmember_correct,
        tail_profile=tail_profile(nonmember_logits, ln),
        gate=gate,
        coarse_levels=coarse_levels,
        partial_gate=partial_gate,
    )


def tail_profile(logits: np.ndarray, label: np.ndarray) -> list[float]:
    """Mean share of each rank among the non-label classes, forced strictly decreasing."""
    z = np.asarray(logits, dtype=np.float64)
    c = z.shape[1]
    if c == 2:
        return [1.0]
    order = class_order(z, label)
    x = z - z.max(1, keepdims=True)
    e = np.exp(np.take_along_axis(x, order, axis=1))
    share = (e / e.sum(1, keepdims=True)).mean(0)
    for i in range(1, len(share)):  # strictly decreasing, so the order is readable from the output
        share[i] = min(share[i], share[i - 1] * 0.9)
    share = share / share.sum()
    return share.tolist()
