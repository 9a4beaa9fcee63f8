"""Output-modification baselines, as exact deterministic functions of the raw served probabilities.

Each baseline maps the float32 probability vector ``veil_raw`` serves to another vector; the
target's rows, the attacker's shadow/reference rows and the query-attack rows all go through the
same function (an attacker who knows the defense simulates it exactly). Randomness, where there
is any, is seeded by the row's bytes, so repeating a query returns the same output. All keep the
predicted label (the random-noise baseline swaps values back if noise would change it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]
TINY = np.finfo(np.float64).tiny


def _f32(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.float64)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _keep_label(raw: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Swap values so that ``out``'s argmax is ``raw``'s (ties resolved towards the raw label)."""
    out = np.array(out, np.float64)
    rows = np.arange(len(out))
    label, now = raw.argmax(1), out.argmax(1)
    bad = (now != label) | (out[rows, label] < out.max(1))
    a, b = out[rows[bad], label[bad]], out[rows[bad], now[bad]]
    out[rows[bad], label[bad]], out[rows[bad], now[bad]] = b, a
    return out


def clamp(c: float) -> Transform:
    """Top probability capped at ``c`` (label kept): a row whose top is above ``c`` is mixed with the
    uniform vector just enough to bring its top down to ``c``. Mixing keeps the label and the whole
    class order; rows at or below ``c`` are untouched. (Scaling only the non-top entries up, the
    earlier form, needed a row-dependent cap on more than two classes and ranked the most confident
    rows lowest.)"""

    def f(raw: np.ndarray) -> np.ndarray:
        p = np.asarray(raw, np.float64)
        p = p / p.sum(1, keepdims=True)
        u = 1.0 / p.shape[1]
        top = p.max(1)
        lam = np.where(top > c, (c - u) / np.maximum(top - u, TINY), 1.0)[:, None]
        return _f32(_keep_label(p, lam * p + (1 - lam) * u))

    return f


def label_only(raw: np.ndarray) -> np.ndarray:
    p = np.asarray(raw)
    return np.eye(p.shape[1], dtype=np.float32)[p.argmax(1)]


def calibrated_label_only(precision: np.ndarray) -> Transform:
    """The label, with confidence set to that class's precision (measured on calibration
    non-members: share of rows predicted as the class that are that class), rest spread evenly."""
    precision = np.asarray(precision, np.float64)

    def f(raw: np.ndarray) -> np.ndarray:
        p = np.asarray(raw)
        c = p.shape[1]
        top = p.argmax(1)
        conf = np.maximum(precision[top], 1.0 / c)
        q = np.repeat(((1 - conf) / max(c - 1, 1))[:, None], c, 1)
        q[np.arange(len(p)), top] = conf
        return _f32(q)

    return f


def class_precision(raw: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    pred = np.asarray(raw).argmax(1)
    return np.array([(labels[pred == k] == k).mean() if (pred == k).any() else 1.0 / classes for k in range(classes)])


def round_one_decimal(raw: np.ndarray) -> np.ndarray:
    """Every non-top entry rounded to 0.1, the top entry takes the rest; label kept (a top that would
    not stay strictly largest takes 0.1 from the largest other entry until it does)."""
    p = np.asarray(raw, np.float64)
    rows, top = np.arange(len(p)), p.argmax(1)
    q = np.round(p * 10)
    q[rows, top] = 0
    q[rows, top] = 10 - q.sum(1)
    others = np.where(np.eye(p.shape[1], dtype=bool)[top], -np.inf, q).max(1)
    for i in np.flatnonzero(q[rows, top] <= others):
        while True:
            others = [j for j in range(p.shape[1]) if j != top[i]]
            j = max(others, key=lambda k: q[i, k])
            if q[i, top[i]] > q[i, j]:
                break
            q[i, j] -= 1
            q[i, top[i]] += 1
    return _f32(q / 10)


def hamp(top: float) -> Transform:
    """HAMP's test-time output modification (Chen et al., NDSS 2024), deterministic form: every
    output is replaced by one fixed low-confidence vector (top probability ``top``, the rest
    spread almost evenly, strictly decreasing), placed rank by rank in the raw output's class order, so the label and
    the class order are kept and nothing else about the input is."""

    def f(raw: np.ndarray) -> np.ndarray:
        p = np.asarray(raw, np.float64)
        c = p.shape[1]
        avg = (1 - top) / max(c - 1, 1)
        tail = avg + 0.5 * (top - avg) * np.linspace(1, -1, c - 1) if c > 2 else np.full(c - 1, avg)
        template = np.r_[top, tail]  # strictly decreasing below top, sums to 1
        order = np.argsort(-p, 1, kind="stable")
        q = np.empty_like(p)
        np.put_along_axis(q, order, np.broadcast_to(template, p.shape), 1)
        return _f32(q)

    return f


def temperature(t: float) -> Transform:
    def f(raw: np.ndarray) -> np.ndarray:
        z = np.log(np.maximum(np.asarray(raw, np.float64), TINY)) / t
        z -= z.max(1, keepdims=True)
        return _f32(np.exp(z))

    return f


def row_seed(row: np.ndarray) -> int:
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(row, np.float32).tobytes()).digest()[:8], "little")


def noise(sigma: float) -> Transform:
    """Gaussian noise of size ``sigma`` on the log-probabilities, seeded by the row's bytes (the
    same query gets the same output), label kept."""

    def f(raw: np.ndarray) -> np.ndarray:
        p = np.asarray(raw, np.float32)
        z = np.log(np.maximum(p.astype(np.float64), TINY))
        eps = np.stack([np.random.default_rng(row_seed(r)).normal(0, sigma, p.shape[1]) for r in p])
        y = z + eps
        y -= y.max(1, keepdims=True)
        return _f32(_keep_label(p, np.exp(y)))

    return f


@dataclass(frozen=True)
class Baseline:
    name: str
    family: str
    knob: float | None
    transform: Transform


KNOBS = {
    "clamp": (0.2, 0.4, 0.6, 0.8),  # c = 1/C + frac * (1 - 1/C)
    "hamp": (0.05, 0.15, 0.3),  # top = 1/C + frac * (1 - 1/C)
    "temperature": (2.0, 5.0, 20.0),
    "noise": (0.5, 1.0, 2.0),
}
FEW_KNOBS = {"clamp": (0.4, 0.8), "hamp": (0.15,), "temperature": (5.0,), "noise": (1.0,)}
"""A CI-sized sweep (``--quick``)."""


def baselines(classes: int, precision: np.ndarray, knobs: dict[str, tuple[float, ...]] = KNOBS) -> list[Baseline]:
    """The swept baselines: clamp at several c, calibrated label-only, one decimal, HAMP at
    several top values, temperature at several T, noise at several sizes."""
    lo = 1.0 / classes
    out = [Baseline("calibrated_label_only", "calibrated_label_only", None, calibrated_label_only(precision))]
    out.append(Baseline("round_1dp", "round_1dp", None, round_one_decimal))
    for frac in knobs["clamp"]:
        c = round(lo + frac * (1 - lo), 3)
        out.append(Baseline(f"clamp_{c:g}", "clamp", c, clamp(c)))
    for frac in knobs["hamp"]:
        h = round(lo + frac * (1 - lo), 3)
        out.append(Baseline(f"hamp_{h:g}", "hamp", h, hamp(h)))
    for t in knobs["temperature"]:
        out.append(Baseline(f"temperature_{t:g}", "temperature", t, temperature(t)))
    for s in knobs["noise"]:
        out.append(Baseline(f"noise_{s:g}", "noise", s, noise(s)))
    return out
