"""The defender's own membership signal: an index of the training texts' signatures.

The defender knows its training set. A query whose token set is (nearly) that of a training
text is the one whose output can expose membership; any other query's output cannot expose the
membership of that text. :class:`MemberIndex` answers, per query signature, the estimated
Jaccard similarity to the closest training text and that text's true label. Candidates come
from locality-sensitive banding of the MinHash part (bands of two values), so the cost per query
stays flat as the training set grows. A candidate sharing at least half of the MinHash values is
scored by the Jaccard similarity of the two *content sketches* where both have one (exact for
texts of at most 16 content tokens: :func:`~veil.python_backend.fingerprint.sketch_jaccard`);
any other by its share of equal MinHash values (8 values: a noisy estimate, the only one an index
built before the sketch has). Signatures come
from :func:`veil.python_backend.fingerprint.text_signature`, the same function the served
tokenizer runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from veil.python_backend.fingerprint import EMPTY, sketch_containment, sketch_jaccard

BAND = 2


def _band_keys(signatures: np.ndarray) -> np.ndarray:
    """[n, S] int32 -> [n, S // BAND] int64 keys, one per band of BAND values."""
    s = np.asarray(signatures, dtype=np.int64)
    bands = s.shape[1] // BAND
    s = s[:, : bands * BAND].reshape(len(s), bands, BAND)
    return (s[:, :, 0] << 31) ^ s[:, :, 1]


MAX_PAIRS = 1 << 18
"""Candidate (query, member) pairs compared at once (a chunk's sketch comparison sorts [pairs, 32]
int64: 64 MB); larger batches are cut into row chunks."""
REFINE_FROM = 4 / 8
"""Candidates sharing fewer MinHash values keep the MinHash share as their similarity (no weight:
the gate starts at 0.5); a pair of true Jaccard 0.75 is left there with probability 2.7%, 0.9
with 0.04%. Most candidates share only bands of very common tokens: re-scoring just these keeps
the look-up within ~1.5x of the MinHash-only one (60,000 members, a 64-row batch)."""
PAIR_FLOOR = 16
"""Batches of more than :data:`SMALL_BATCH` rows: each step of a look-up handles at least this
many (query, training text) pairs per row (padding, masked out); above it the work follows the
candidates. Padding every row of a large batch to the budget cost 4-16x at batch 256."""
SMALL_BATCH = 4
"""Batches of at most this many rows (what one caller times: one text a request) are padded to the
index's budget (:attr:`MemberIndex.band_budget`, :attr:`MemberIndex.partial_budget`): every array
then has the same shape for any row within the budget, every training text included."""
BUDGET_SAMPLE = 4096
"""Training texts looked up at load to set the compacted steps' budgets: every one up to this many,
an even sample beyond (looking up all of 60,000 SST-2 texts took 21 s)."""
BUDGET_CAP = 512
"""Budgets stop here: a training text finding more candidates has a larger shape than the rest (in
steps of :data:`PAIR_FLOOR`). The dial between cost and equal work: every training text of the
builds here is within it (AG News: 432 partial-match pairs at most); with 60,000 SST-2 phrases
indexed every budget reaches it (``python -m veil.loadtest.index_bench`` times that look-up)."""
POSTING_CAP = 256
"""Partial matches: a content value in more training texts than this finds no candidates (it
names no text); pairs found through rarer values still count it among their shared values."""
PARTIAL_MIN_SHARED = 2
"""Partial matches: fewer shared content values than this is no match (one word names no text).
Chosen with the partial gate's ramp and the map's member side by ``python -m
veil.privacy.tune_partial`` (development seed, re-run 2026-12-03 with the crop probe's learned
attack fixed: 2 values, the map fitted on the crops the Jaccard gate does not take over, read +0.45
pt mean under averaged crops against 3 values' +0.55; 2 moves 9.6% of held-out texts, 3 5.8%)."""


def _row_chunks(per_row: np.ndarray) -> Iterator[tuple[int, int]]:
    """Row ranges ``[first, last)`` of at most :data:`MAX_PAIRS` candidate pairs (always at least one row)."""
    first = 0
    while first < len(per_row):
        last = first + max(1, int(np.searchsorted(np.cumsum(per_row[first:]), MAX_PAIRS, side="right")))
        yield first, last
        first = last


def _expand(lo: np.ndarray, counts: np.ndarray, first: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate ranges ``lo[r, j] : lo[r, j] + counts[r, j]`` of rows ``first, first + 1, ...`` ->
    one entry per candidate: (its query row, its column j, its position in the sorted table)."""
    c = counts.ravel()
    cell = np.repeat(np.arange(c.size), c)
    position = np.repeat(lo.ravel(), c) + np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
    return first + cell // counts.shape[1], cell % counts.shape[1], position


def _first_per_row(rows: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of each row's best pair: ordered by ``keys`` (the last the most significant, ascending)."""
    pick = np.lexsort((*keys, rows))
    return pick[np.r_[True, rows[pick][1:] != rows[pick][:-1]]]


def _pad(values: np.ndarray, size: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` padded with ``fill`` to at least ``size`` entries, and which entries are real."""
    extra = max(size - len(values), 0)
    real = np.concatenate([np.ones(len(values), dtype=bool), np.zeros(extra, dtype=bool)])
    return np.concatenate([values, np.full(extra, fill, dtype=values.dtype)]), real


def _pad_rows(rows: np.ndarray, first: int, last: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair rows padded to ``size`` (at least one more entry per row): one padding entry for every
    row ``first..last-1``, so each row has a best pair, then entries of row ``first``."""
    marks = np.arange(first, last)
    rows = np.concatenate([rows, marks])
    return _pad(rows, size, first)[0], np.arange(max(size, len(rows))) < len(rows) - len(marks)


def _pairs(
    lo: np.ndarray, counts: np.ndarray, first: int, *, least: int, exact: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs of rows ``first, first + 1, ...`` (runs ``lo[r, j] : lo[r, j] + counts[r, j]``
    of a sorted table): (query row, column j, position in the table, real), padded. ``exact``: every
    row gets ``least`` slots (more, in steps of :data:`PAIR_FLOOR`, if a row has more candidates),
    filled in column order, so no array's shape depends on what the rows match. Otherwise the
    candidates, one padding entry per row (each row has a best pair), padded to ``least`` + 1 a row."""
    m = len(lo)
    if exact:
        width = max(least, -(-int(counts.sum(1).max()) // PAIR_FLOOR) * PAIR_FLOOR)
        slot = np.arange(width)
        ends = np.cumsum(counts, axis=1)
        column = np.minimum((ends[:, None, :] <= slot[:, None]).sum(-1), counts.shape[1] - 1)
        real = slot < ends[:, -1:]
        offset = slot - np.take_along_axis(ends - counts, column, 1)
        position = np.where(real, np.take_along_axis(lo, column, 1) + offset, 0)
        return np.repeat(np.arange(first, first + m), width), column.ravel(), position.ravel(), real.ravel()
    rows, column, position = _expand(lo, counts, first)
    rows, real = _pad_rows(rows, first, first + m, (least + 1) * m)
    return rows, _pad(column, len(rows), 0)[0], _pad(position, len(rows), 0)[0], real


def _compact(mask: np.ndarray, least: int) -> tuple[np.ndarray, np.ndarray]:
    """The entries of ``mask`` that are set first (in order), then the rest, cut to ``least``
    entries (more, in steps of :data:`PAIR_FLOOR`, if more are set): (indices, which are set). A
    step that works on the set entries only thus has the same shape for any count up to ``least``."""
    size = min(len(mask), max(least, -(-int(mask.sum()) // PAIR_FLOOR) * PAIR_FLOOR))
    pick = np.argsort(~mask, kind="stable")[:size]
    return pick, mask[pick]


def _spread(size: int, n: int) -> np.ndarray:
    """``size`` training-text rows spread over the index, for padding pairs to read: a padding pair
    that always read row 0 would be served from the cache, and a row with real candidates (a
    training text always has them) would take longer."""
    return (np.arange(size, dtype=np.int64) * 40503) % max(n, 1)


def _budget(per_text: np.ndarray) -> int:
    """The most candidates any training text finds as a query, in steps of :data:`PAIR_FLOOR`
    (at least one step, at most :data:`BUDGET_CAP`)."""
    most = int(per_text.max()) if len(per_text) else 0
    return min(max(-(-most // PAIR_FLOOR), 1) * PAIR_FLOOR, BUDGET_CAP)


class MemberIndex:
    """Each band's keys sorted once (``argsort``); a query batch finds its candidates with one
    ``searchsorted`` per band and compares all (query, candidate) pairs in one numpy expression.

    Equal work: a training text always finds itself (and a non-member often finds nothing), so a
    look-up that skipped work when it found nothing would time membership. Every row goes through
    the same steps with padding masked out of the answer: a batch of up to :data:`SMALL_BATCH`
    rows is padded to the index's budget (the most any training text finds), so its arrays have
    the same shapes whatever it matches; a larger batch to :data:`PAIR_FLOOR` pairs per row."""

    def __init__(
        self,
        signatures: np.ndarray,
        labels: np.ndarray,
        *,
        sketches: np.ndarray | None = None,
        sequences: np.ndarray | None = None,
        parts: np.ndarray | None = None,
    ) -> None:
        """``signatures``: [N, S] MinHash values; ``sketches``: [N, K] content sketches and
        ``sequences``: [N] token-sequence hashes (both optional: an index built before them);
        ``parts``: [N] the leave-out part model that never trained on each training text
        (:mod:`veil.export.leave_out`)."""
        self.signatures = np.ascontiguousarray(signatures, dtype=np.int32)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self.signatures.ndim != 2 or len(self.signatures) != len(self.labels):
            raise ValueError("member signatures must be [N, S] with one label per row")
        self.sketches = None if sketches is None else np.ascontiguousarray(sketches, dtype=np.int32)
        if self.sketches is not None and (self.sketches.ndim != 2 or len(self.sketches) != len(self.labels)):
            raise ValueError("member sketches must be [N, K], one row per member")
        if sequences is not None and np.shape(sequences) != (len(self.labels),):
            raise ValueError("member sequences must be [N], one hash per member")
        self.sequences, self.sequence_rows = None, None
        if sequences is not None:  # sorted unique hashes, and the first training text of each
            self.sequences, self.sequence_rows = np.unique(np.asarray(sequences, dtype=np.int64), return_index=True)
        if parts is not None and np.shape(parts) != (len(self.labels),):
            raise ValueError("member parts must be [N], one leave-out part per member")
        self.parts = None if parts is None else np.ascontiguousarray(parts, dtype=np.int64)
        keys = _band_keys(self.signatures)
        self.order = np.argsort(keys, axis=0, kind="stable")  # [N, bands]: members by key, then index
        self.sorted_keys = np.take_along_axis(keys, self.order, axis=0)
        own = np.zeros(len(keys), dtype=np.int64)  # band candidates each training text finds as a query
        for b in range(keys.shape[1] if len(keys) else 0):
            _, inverse, runs = np.unique(keys[:, b], return_inverse=True, return_counts=True)
            own += runs[inverse.reshape(-1)]
        self.band_budget = _budget(own)
        """Band candidate pairs a row of a small batch is padded to."""
        self.partial_budget = PAIR_FLOOR
        """Partial-match candidate pairs a row of a small batch is padded to."""
        self.refine_budget = self.keep_budget = BUDGET_CAP
        """Pairs a row of a small batch re-scores by sketches (band look-up) and compares (partial look-up)."""
        if self.sketches is not None:  # the partial-match look-up: content value -> training texts
            valid = self.sketches != EMPTY
            value = self.sketches[valid].astype(np.int64)
            owner = np.nonzero(valid)[0]
            by_value = np.lexsort((owner, value))
            value, owner = value[by_value], owner[by_value]
            start = np.flatnonzero(np.r_[True, value[1:] != value[:-1]]) if len(value) else np.zeros(0, np.int64)
            end = np.r_[start[1:], len(value)]
            rare = end - start <= POSTING_CAP
            self.post_values, self.post_start, self.post_end = value[start][rare], start[rare], end[rare]
            self.post_owner = owner
            self.common_values = value[start][~rare]
            self.partial_budget = _budget(self._postings(self.sketches)[1].sum(1))
        self._own_budgets()

    def _own_budgets(self) -> None:
        """:attr:`refine_budget` and :attr:`keep_budget`: the most pairs a training text re-scores
        and compares when it is the query (a look-up of up to :data:`BUDGET_SAMPLE` of them at load)."""
        if not len(self):
            return
        rows = np.unique(np.linspace(0, len(self) - 1, min(len(self), BUDGET_SAMPLE)).round().astype(np.int64))
        n = len(rows)
        signatures = self.signatures[rows]
        sketches = None if self.sketches is None else self.sketches[rows].astype(np.int64)
        tally = np.zeros(n, dtype=np.int64)
        scratch = np.zeros(n), np.zeros(n, dtype=np.int64)
        lo, hi = self._band_runs(signatures)
        for first, last in _row_chunks(np.maximum((hi - lo).sum(1), PAIR_FLOOR) + 1):
            kw = {"least": PAIR_FLOOR, "exact": False, "tally": tally}
            self._best(signatures, sketches, lo, hi, first, last, *scratch, **kw)
        self.refine_budget = _budget(tally)
        if sketches is None or not len(self.post_values):
            return
        lo, counts = self._postings(sketches)
        common = np.isin(sketches, self.common_values).sum(1)
        for first, last in _row_chunks(np.maximum(counts.sum(1), PAIR_FLOOR) + 1):
            kw = {"least": PAIR_FLOOR, "exact": False, "tally": tally}
            self._best_partial(sketches, counts, lo, common, first, last, *scratch, PARTIAL_MIN_SHARED, **kw)
        self.keep_budget = _budget(tally)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_sequences(self) -> bool:
        return self.sequences is not None

    @property
    def has_parts(self) -> bool:
        return self.parts is not None

    def exact(self, sequences: np.ndarray) -> np.ndarray:
        """[n] bool: the query's token-sequence hash is a training text's (an exact copy of it, as
        the classifier sees it). Needs an index built with sequences."""
        return self.copy_of(sequences) >= 0

    def copy_of(self, sequences: np.ndarray) -> np.ndarray:
        """[n] int64: the training text (row) each query is an exact copy of, by its token-sequence
        hash; -1 where none. Needs an index built with sequences."""
        if self.sequences is None or self.sequence_rows is None:
            raise ValueError("this member index has no sequence hashes (an artifact built before them)")
        q = np.asarray(sequences, dtype=np.int64).reshape(-1)
        if not len(self.sequences):
            return np.full(len(q), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.sequences, q), len(self.sequences) - 1)
        return np.where(self.sequences[at] == q, self.sequence_rows[at], -1).astype(np.int64)

    @property
    def size(self) -> int:
        return self.signatures.shape[1] if self.signatures.ndim == 2 else 0

    def nearest(self, signatures: np.ndarray, *, sketches: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per query row: (estimated Jaccard similarity to the closest member in [0, 1], that
        member's label, -1 where no member shares a band). Ties go to the lowest member index.
        ``sketches``: the queries' content sketches; used where the index has them too."""
        sim, row = self.nearest_rows(signatures, sketches=sketches)
        return sim, self.labels_of(row)

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        """Each row's training label; -1 where the row is -1 (no match)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self):
            return np.full(rows.shape, -1, dtype=np.int64)
        return np.where(rows >= 0, self.labels[np.clip(rows, 0, len(self) - 1)], -1)

    def nearest_rows(
        self, signatures: np.ndarray, *, sketches: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`nearest` with the closest member's row (index order) instead of its label."""
        q = np.asarray(signatures, dtype=np.int32)
        n = len(q)
        sim = np.zeros(n)
        found = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return sim, found
        if q.shape[1] != self.size:
            raise ValueError(f"signatures have {q.shape[1]} values; the member index has {self.size}")
        qs = None
        if sketches is not None and self.sketches is not None:
            qs = np.asarray(sketches, dtype=np.int32)
            if qs.shape != (n, self.sketches.shape[1]):
                raise ValueError(f"sketches are {qs.shape}; expected ({n}, {self.sketches.shape[1]})")
        lo, hi = self._band_runs(q)
        exact = n <= SMALL_BATCH
        least = self.band_budget if exact else PAIR_FLOOR
        for first, last in _row_chunks(np.maximum((hi - lo).sum(1), least) + 1):
            self._best(q, qs, lo, hi, first, last, sim, found, least=least, exact=exact)
        return sim, found

    def _band_runs(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, bands] each query band's run of training texts in the sorted table: (start, end)."""
        keys = _band_keys(q)
        lo = np.empty(keys.shape, dtype=np.int64)
        hi = np.empty(keys.shape, dtype=np.int64)
        for b in range(keys.shape[1]):  # a few bands; every row at once
            lo[:, b] = np.searchsorted(self.sorted_keys[:, b], keys[:, b], side="left")
            hi[:, b] = np.searchsorted(self.sorted_keys[:, b], keys[:, b], side="right")
        return lo, hi

    def _similarity(
        self, q: np.ndarray, qs: np.ndarray | None, rows: np.ndarray, member: np.ndarray, real: np.ndarray, least: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(query row, member) pairs -> (similarity, -1 for padding; which pairs were re-scored):
        the sketch Jaccard where defined and the MinHash share is at least :data:`REFINE_FROM`,
        else the MinHash share. The re-scored pairs are compacted to ``least`` (:func:`_compact`)."""
        share = (self.signatures[member] == q[rows]).sum(1) / self.size
        refine = real & (share >= REFINE_FROM)
        if qs is not None:
            pick, picked = _compact(refine, least)
            jaccard, defined = sketch_jaccard(qs[rows[pick]], self.sketches[member[pick]])
            share[pick] = np.where(picked & defined, jaccard, share[pick])
        return np.where(real, share, -1.0), refine

    def _best(
        self,
        q: np.ndarray,
        qs: np.ndarray | None,
        lo: np.ndarray,
        hi: np.ndarray,
        first: int,
        last: int,
        sim: np.ndarray,
        best_row: np.ndarray,
        *,
        least: int,
        exact: bool,
        tally: np.ndarray | None = None,
    ) -> None:
        """Rows ``first:last``: every (row, candidate) pair's similarity (:func:`_pairs`), the best
        per row. ``tally``: gets each row's count of re-scored pairs (the budgets)."""
        m = last - first
        counts = hi[first:last] - lo[first:last]
        rows, band, position, real = _pairs(lo[first:last], counts, first, least=least, exact=exact)
        member = np.where(real, self.order[position, band], _spread(len(rows), len(self)))
        refine_least = (self.refine_budget if exact else PAIR_FLOOR) * m
        pair_sim, refine = self._similarity(q, qs, rows, member, real, refine_least)
        if tally is not None:
            tally[first:last] = np.bincount(rows[refine] - first, minlength=m)
        head = _first_per_row(rows, member, -pair_sim)  # most similar first, then lowest member
        hit = pair_sim[head] >= 0  # a row whose best is padding found nothing
        sim[first:last] = np.where(hit, pair_sim[head], 0.0)
        best_row[first:last] = np.where(hit, member[head], -1)

    def _postings(self, qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, K] each query content value's run in the postings: (start, training texts holding
        it; 0 for a common, unknown or empty value)."""
        qs = np.asarray(qs, dtype=np.int64)
        if not len(self.post_values):
            return np.zeros(qs.shape, dtype=np.int64), np.zeros(qs.shape, dtype=np.int64)
        pos = np.searchsorted(self.post_values, qs).clip(0, len(self.post_values) - 1)
        hit = (qs != EMPTY) & (self.post_values[pos] == qs)
        return np.where(hit, self.post_start[pos], 0), np.where(hit, self.post_end[pos] - self.post_start[pos], 0)

    def partial(self, sketches: np.ndarray, *, min_shared: int = PARTIAL_MIN_SHARED) -> tuple[np.ndarray, np.ndarray]:
        """Per query content sketch: (overlap coefficient with the training text it overlaps most,
        that text's label, -1 where none shares ``min_shared`` values). 1 when the
        query's content words are all in one training text (a crop of it) or hold all of one
        (the text padded with other words). Candidates: the training texts sharing a content value
        held by at most :data:`POSTING_CAP` of them; ties go to more shared values, then the
        lowest index. Needs an index built with sketches."""
        if self.sketches is None:
            raise ValueError("this member index has no content sketches (an artifact built before them)")
        qs = np.asarray(sketches, dtype=np.int64)
        n = len(qs)
        overlap = np.zeros(n)
        label = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return overlap, label
        if qs.shape != (n, self.sketches.shape[1]):
            raise ValueError(f"sketches are {qs.shape}; expected ({n}, {self.sketches.shape[1]})")
        if not len(self.post_values):
            return overlap, label
        lo, counts = self._postings(qs)
        # A pair can share at most its rare values plus the row's common ones (held by more than
        # POSTING_CAP texts): pairs that cannot reach min_shared never count.
        common = np.isin(qs, self.common_values).sum(1)
        exact = n <= SMALL_BATCH
        least = self.partial_budget if exact else PAIR_FLOOR
        for first, last in _row_chunks(np.maximum(counts.sum(1), least) + 1):
            self._best_partial(
                qs, counts, lo, common, first, last, overlap, label, min_shared, least=least, exact=exact
            )
        return overlap, label

    def _best_partial(
        self,
        qs: np.ndarray,
        counts: np.ndarray,
        lo: np.ndarray,
        common: np.ndarray,
        first: int,
        last: int,
        overlap: np.ndarray,
        label: np.ndarray,
        min_shared: int,
        *,
        least: int,
        exact: bool,
        tally: np.ndarray | None = None,
    ) -> None:
        """Rows ``first:last``: every candidate pair that can share enough values compared (compacted
        to the keep budget, ``exact``, or :data:`PAIR_FLOOR` a row), the best per row. ``tally``:
        gets each row's count of pairs compared (the budgets)."""
        n = len(self)
        rows, _, position, real = _pairs(lo[first:last], counts[first:last], first, least=least, exact=exact)
        member = np.where(real, self.post_owner[position], n)  # padding pairs a row with no text
        # Each (row, text) pair once, with how many rare values it shares: runs of the sorted keys,
        # kept at full length (a run's first entry stands for it), so the shapes do not follow them.
        key = np.sort(rows * (n + 1) + member)
        start = np.concatenate([[True], key[1:] != key[:-1]])
        run = np.cumsum(start) - 1
        rare = np.bincount(run, minlength=len(key))[run]
        rows, member = key // (n + 1), key % (n + 1)
        keep = start & (member < n) & (rare + common[rows] >= min_shared)
        if tally is not None:
            tally[first:last] = np.bincount(rows[keep] - first, minlength=last - first)
        pick, picked = _compact(keep, (self.keep_budget if exact else PAIR_FLOOR) * (last - first))
        text = np.where(member[pick] < n, member[pick], _spread(len(pick), n))  # padding reads spread rows too
        ov_p, shared_p = sketch_containment(qs[rows[pick]], self.sketches[text])
        ok = picked & (shared_p >= min_shared)
        ov, shared = np.zeros(len(key)), np.full(len(key), -1)
        ov[pick], shared[pick] = np.where(ok, ov_p, 0.0), np.where(ok, shared_p, -1)
        head = _first_per_row(rows, member, -shared, -ov)  # most overlap, then most shared, then lowest member
        hit = ov[head] > 0
        overlap[first:last] = np.where(hit, ov[head], 0.0)
        label[first:last] = np.where(hit, self.labels[np.minimum(member[head], n - 1)], -1)
