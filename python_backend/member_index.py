"""The defender's own membership signal: an index of the training texts' MinHash signatures.

The defender knows its training set. A query whose token set is (nearly) that of a training
text is the one whose output can expose membership; any other query's output cannot expose the
membership of that text. :class:`MemberIndex` answers, per query signature, the estimated
Jaccard similarity to the closest training text and that text's true label, with locality-
sensitive banding (bands of two MinHash values) so the cost per query stays flat as the training
set grows. Signatures come from :func:`veil.python_backend.fingerprint.text_signature`, the same
function the served tokenizer runs.
"""

from __future__ import annotations

import numpy as np

BAND = 2


def _band_keys(signatures: np.ndarray) -> np.ndarray:
    """[n, S] int32 -> [n, S // BAND] int64 keys, one per band of BAND values."""
    s = np.asarray(signatures, dtype=np.int64)
    bands = s.shape[1] // BAND
    s = s[:, : bands * BAND].reshape(len(s), bands, BAND)
    return (s[:, :, 0] << 31) ^ s[:, :, 1]


class MemberIndex:
    def __init__(self, signatures: np.ndarray, labels: np.ndarray) -> None:
        self.signatures = np.ascontiguousarray(signatures, dtype=np.int32)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        if self.signatures.ndim != 2 or len(self.signatures) != len(self.labels):
            raise ValueError("member signatures must be [N, S] with one label per row")
        self.tables: list[dict[int, np.ndarray]] = []
        keys = _band_keys(self.signatures)
        for b in range(keys.shape[1] if len(keys) else 0):
            order = np.argsort(keys[:, b], kind="stable")
            sorted_keys = keys[order, b]
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            ends = np.r_[starts[1:], len(order)]
            self.tables.append(
                {int(sorted_keys[s]): order[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)}
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return self.signatures.shape[1] if self.signatures.ndim == 2 else 0

    def nearest(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query row: (estimated Jaccard similarity to the closest member in [0, 1], that
        member's label, -1 where no member shares a band). Ties go to the lowest member index."""
        q = np.asarray(signatures, dtype=np.int32)
        n = len(q)
        sim = np.zeros(n)
        label = np.full(n, -1, dtype=np.int64)
        if n == 0 or len(self) == 0:
            return sim, label
        if q.shape[1] != self.size:
            raise ValueError(f"signatures have {q.shape[1]} values; the member index has {self.size}")
        keys = _band_keys(q)
        for i in range(n):
            found = [t[k] for t, k in zip(self.tables, keys[i].tolist(), strict=True) if k in t]
            if not found:
                continue
            cand = np.unique(np.concatenate(found)) if len(found) > 1 else found[0]
            equal = (self.signatures[cand] == q[i]).sum(1)
            best = int(np.argmax(equal))
            sim[i] = equal[best] / self.size
            label[i] = self.labels[cand[best]]
        return sim, label
