"""Triton model ``mia_defense``: logits in, defended probabilities and label out.

Fails closed: a missing, corrupt or foreign artifact raises in ``initialize`` (the model never
becomes ready), and any failure of the defense at run time is an error response for the
affected requests, never the raw softmax.
"""

from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np
import triton_python_backend_utils as pb_utils

from veil.python_backend.adaptive import AdaptiveConfig, ThreatTracker, normalise_client_id
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import SIGNATURE_SIZE
from veil.python_backend.probabilities import check_logits
from veil.python_backend.triton.common import (
    CLIENT_ID_KEY,
    device_of,
    input_array,
    internal,
    invalid,
    optional_input,
    parameters,
    request_parameters,
    version_dir,
)
from veil.wire import METRICS_FLUSH_S


class Telemetry:
    """Triton custom metrics (counters; means are sum / count on the Prometheus side, and
    running means are exported as gauges for a quick look).

    Every metric update is a call into the Triton process, a dozen per request; so requests only
    add to local totals and a background thread sends the changes every ``flush_every_s``
    (0 sends them with every request). Scraped values lag by at most that interval."""

    COUNTERS: ClassVar[dict[str, str]] = {
        "veil_outputs_total": "Output rows seen by the defense",
        "veil_outputs_perturbed_total": "Output rows the defense perturbed",
        "veil_pgd_steps_total": "PGD gradient steps taken",
        "veil_budget_exhausted_total": "Rows where PGD ran out of steps or budget",
        "veil_risk_before_sum": "Sum of risk scores before the defense",
        "veil_risk_after_sum": "Sum of risk scores after the defense",
        "veil_delta_abs_sum": "Sum over perturbed rows of mean |delta| (logit units)",
        "veil_request_errors_total": "Requests answered with an error",
    }
    GAUGES: ClassVar[dict[str, str]] = {
        "veil_risk_before_mean": "Mean risk before the defense (since start)",
        "veil_risk_after_mean": "Mean risk after the defense (since start)",
        "veil_delta_abs_mean": "Mean |delta| over perturbed rows (since start)",
        "veil_tracked_clients": "Clients in the adaptive-intensity table",
        "veil_tracked_clients_bytes": "Approximate bytes held by the adaptive-intensity table",
    }

    def __init__(self, labels: dict[str, str], *, flush_every_s: float = METRICS_FLUSH_S) -> None:
        self.metric = {}
        self.families = []
        for kind, table in (
            (pb_utils.MetricFamily.COUNTER, self.COUNTERS),
            (pb_utils.MetricFamily.GAUGE, self.GAUGES),
        ):
            for name, desc in table.items():
                family = pb_utils.MetricFamily(name=name, description=desc, kind=kind)
                self.families.append(family)
                self.metric[name] = family.Metric(labels=labels)
        # Totals since start and what the metrics have already been told: each metric update is a
        # call into Triton, so they are batched and flushed at most every ``flush_every_s``.
        self.totals = dict.fromkeys(
            ("n", "perturbed", "steps", "exhausted", "risk_before", "risk_after", "delta", "errors"), 0.0
        )
        self.sent = dict(self.totals)
        self.tracked = (0, 0)
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

    def record(self, out, tracked: int, tracked_bytes: int) -> None:
        moved = out.perturbed
        delta = float(np.abs(out.delta[moved]).mean(1).sum()) if moved.any() else 0.0
        with self.lock:
            t = self.totals
            t["n"] += len(moved)
            t["perturbed"] += int(moved.sum())
            t["steps"] += int(out.steps.sum())
            t["exhausted"] += int(out.exhausted.sum())
            t["risk_before"] += float(out.risk_before.sum())
            t["risk_after"] += float(out.risk_after.sum())
            t["delta"] += delta
            self.tracked = (tracked, tracked_bytes)
        if self.flusher is None:
            self.flush()

    def error(self, count: int = 1) -> None:
        with self.lock:
            self.totals["errors"] += count
        if self.flusher is None:
            self.flush()

    def flush(self) -> None:
        """Send what changed since the last flush to Triton's metrics."""
        with self.lock:
            t, tracked = dict(self.totals), self.tracked
        m = self.metric
        for counter, key in (
            ("veil_outputs_total", "n"),
            ("veil_outputs_perturbed_total", "perturbed"),
            ("veil_pgd_steps_total", "steps"),
            ("veil_budget_exhausted_total", "exhausted"),
            ("veil_risk_before_sum", "risk_before"),
            ("veil_risk_after_sum", "risk_after"),
            ("veil_delta_abs_sum", "delta"),
            ("veil_request_errors_total", "errors"),
        ):
            if t[key] != self.sent[key]:
                m[counter].increment(t[key] - self.sent[key])
                self.sent[key] = t[key]
        m["veil_risk_before_mean"].set(t["risk_before"] / max(t["n"], 1))
        m["veil_risk_after_mean"].set(t["risk_after"] / max(t["n"], 1))
        m["veil_delta_abs_mean"].set(t["delta"] / max(t["perturbed"], 1))
        m["veil_tracked_clients"].set(tracked[0])
        m["veil_tracked_clients_bytes"].set(tracked[1])


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = parameters(args)
        artifact = DefenseArtifact.load(
            version_dir(args) / "defense", expected_classifier_sha256=params["classifier_sha256"]
        )
        device = device_of(args)
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("mia_defense instance is KIND_GPU but torch sees no CUDA device")
        else:
            import torch

            torch.set_num_threads(int(params.get("torch_threads", "1")))
        self.defense = Defense(artifact, config=DefenseConfig(variant=params["variant"]), device=device)
        self.tracker = ThreatTracker(AdaptiveConfig(max_clients=int(params.get("max_clients", "10000"))))
        self.telemetry = Telemetry(
            {"model": args["model_name"], "variant": params["variant"]},
            flush_every_s=float(params.get("metrics_flush_s", str(METRICS_FLUSH_S))),
        )

    def finalize(self) -> None:
        self.telemetry.close()

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batch: list[tuple[int, np.ndarray, float]] = []
        adaptive = self.defense.adaptive
        max_bytes = self.tracker.config.max_client_id_bytes
        for i, request in enumerate(requests):
            try:
                logits = np.asarray(input_array(request, "logits"), dtype=np.float32)
                check_logits(logits)
                if logits.shape[1] != self.defense.num_classes:
                    raise ValueError(f"expected {self.defense.num_classes} logits per row, got {logits.shape[1]}")
                client = normalise_client_id(request_parameters(request).get(CLIENT_ID_KEY), max_bytes=max_bytes)
                signature = optional_input(request, "fingerprint")
                if signature is not None and signature.shape != (len(logits), SIGNATURE_SIZE):
                    raise ValueError(
                        f"fingerprint must have shape [{len(logits)}, {SIGNATURE_SIZE}], got {list(signature.shape)}"
                    )
            except ValueError as err:
                responses[i] = invalid(str(err))
                self.telemetry.error()
                continue
            threat = self.tracker.observe(client, logits, signature) if adaptive else 0.0
            batch.append((i, logits, threat))
        if batch:
            z = np.concatenate([b[1] for b in batch])
            threat = np.concatenate([np.full(len(b[1]), b[2]) for b in batch])
            try:
                out = self.defense(z, threat=threat)
            except Exception as err:
                for i, _, _ in batch:
                    responses[i] = internal(f"defense failed; no output returned: {err}")
                self.telemetry.error(len(batch))
                return responses
            start = 0
            for i, logits, _ in batch:
                n = len(logits)
                probs = out.probabilities[start : start + n]
                label = out.labels[start : start + n, None]
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor("probabilities", probs), pb_utils.Tensor("label", label)]
                )
                start += n
            self.telemetry.record(out, len(self.tracker), self.tracker.memory_bytes())
        return responses
