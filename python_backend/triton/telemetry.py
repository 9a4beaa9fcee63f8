"""The defense step's Triton custom metrics: one table names each metric, its kind and its source.

Every metric update is a call into the Triton process, a dozen per request; so requests only note
their result and a background thread adds them up and sends the changes every ``flush_every_s``
(0 does both with every request). Scraped values lag by at most that interval. Means are sum / count on the
Prometheus side; running means are also exported as gauges for a quick look.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from veil.python_backend.result import DefenseResult
from veil.wire import METRICS_FLUSH_S


@dataclass(frozen=True)
class Metric:
    name: str
    counter: bool
    description: str
    total: str = ""
    """Counters: the running total they report. Gauges: the numerator of a running mean."""
    per: str = ""
    """Gauges: the denominator of the running mean (empty: the value itself)."""


METRICS = (
    Metric("veil_outputs_total", True, "Output rows seen by the defense", "n"),
    Metric("veil_outputs_perturbed_total", True, "Output rows the defense moved", "perturbed"),
    Metric("veil_pgd_steps_total", True, "PGD gradient steps taken (level-set variants)", "steps"),
    Metric("veil_budget_exhausted_total", True, "Rows where PGD ran out of steps or budget", "exhausted"),
    Metric(
        "veil_risk_before_sum", True, "Sum of risk (selective: membership weight) before the defense", "risk_before"
    ),
    Metric("veil_risk_after_sum", True, "Sum of risk after the defense", "risk_after"),
    Metric("veil_delta_abs_sum", True, "Sum over moved rows of mean |delta| (logit units)", "delta"),
    Metric("veil_request_errors_total", True, "Requests answered with an error", "errors"),
    Metric("veil_risk_before_mean", False, "Mean risk before the defense (since start)", "risk_before", "n"),
    Metric("veil_risk_after_mean", False, "Mean risk after the defense (since start)", "risk_after", "n"),
    Metric("veil_delta_abs_mean", False, "Mean |delta| over moved rows (since start)", "delta", "perturbed"),
    Metric("veil_tracked_clients", False, "Clients in the adaptive-intensity table", "tracked"),
    Metric(
        "veil_tracked_clients_bytes", False, "Approximate bytes held by the adaptive-intensity table", "tracked_bytes"
    ),
    Metric(
        "veil_state_fallback_total",
        True,
        "Output rows served at the fallback threat 1 because the adaptive state store did not answer",
        "fallback",
    ),
    Metric("veil_state_degraded", False, "1 while this instance's adaptive state store does not answer", "degraded"),
)
TOTALS = ("n", "perturbed", "steps", "exhausted", "risk_before", "risk_after", "delta", "errors", "fallback")
PER_INSTANCE = ("veil_state_degraded",)
"""Gauges one instance owns (labelled with the instance): instances of a model share the others."""


class Telemetry:
    def __init__(self, labels: dict[str, str], *, flush_every_s: float = METRICS_FLUSH_S, instance: str = "") -> None:
        self.metric = {}
        self.families = []
        for m in METRICS:
            kind = pb_utils.MetricFamily.COUNTER if m.counter else pb_utils.MetricFamily.GAUGE
            family = pb_utils.MetricFamily(name=m.name, description=m.description, kind=kind)
            self.families.append(family)
            own = {"instance": instance} if m.name in PER_INSTANCE and instance else {}
            self.metric[m.name] = family.Metric(labels=labels | own)
        self.totals = dict.fromkeys(TOTALS, 0.0)
        self.sent = dict(self.totals)
        self.tracked = {"tracked": 0.0, "tracked_bytes": 0.0, "degraded": 0.0}
        self.pending: list[DefenseResult] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.flusher = None
        if flush_every_s > 0:
            self.flusher = threading.Thread(target=self._run, args=(flush_every_s,), name="veil-metrics", daemon=True)
            self.flusher.start()

    def _run(self, every: float) -> None:
        while not self.stopped.wait(every):
            self.flush()

    def close(self) -> None:
        self.stopped.set()
        if self.flusher is not None:
            self.flusher.join(timeout=5)
        self.flush()

    def record(
        self, out: DefenseResult, tracked: int, tracked_bytes: int, *, fallback_rows: int = 0, degraded: bool = False
    ) -> None:
        """Note one batch's result; with a flusher its sums are taken there, off the request's path."""
        with self.lock:
            self.pending.append(out)
            self.totals["fallback"] += fallback_rows
            self.tracked = {"tracked": float(tracked), "tracked_bytes": float(tracked_bytes)}
            self.tracked["degraded"] = float(degraded)
        if self.flusher is None:
            self.flush()

    def _add(self, out: DefenseResult) -> None:
        moved = out.perturbed
        with self.lock:
            t = self.totals
            t["n"] += len(moved)
            t["perturbed"] += int(moved.sum())
            t["steps"] += int(out.steps.sum())
            t["exhausted"] += int(out.exhausted.sum())
            t["risk_before"] += float(out.risk_before.sum())
            t["risk_after"] += float(out.risk_after.sum())
            t["delta"] += float(np.abs(out.delta[moved]).mean(1).sum()) if moved.any() else 0.0

    def error(self, count: int = 1) -> None:
        with self.lock:
            self.totals["errors"] += count
        if self.flusher is None:
            self.flush()

    def flush(self) -> None:
        """Add up the batches recorded since the last flush and send what changed to Triton's metrics."""
        with self.lock:
            pending, self.pending = self.pending, []
        for out in pending:
            self._add(out)
        with self.lock:
            values = dict(self.totals) | self.tracked
        for m in METRICS:
            metric = self.metric[m.name]
            if m.counter:
                if values[m.total] != self.sent[m.total]:
                    metric.increment(values[m.total] - self.sent[m.total])
                    self.sent[m.total] = values[m.total]
            else:
                metric.set(values[m.total] / max(values[m.per], 1) if m.per else values[m.total])
