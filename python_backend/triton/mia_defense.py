"""Triton model ``mia_defense``: logits (or the classifier's token inputs) in, defended probabilities and label out.

In the ``hosted`` layout (the default, :mod:`veil.model_repository.spec`) the step runs the ONNX
classifier itself, so the defended ensemble is tokenizer -> mia_defense: the same number of
python-backend hops as an undefended tokenizer -> classifier deployment, and the defense adds only
its own compute. Logits sent directly (benchmarks, tests, the ``ensemble`` layout) are served as
before. Hosted, with the build's leave-out part models (``defense/part<k>.onnx``, opt-in), every
row that sent tokens also runs through one of them on the worker: a whole match of a training text
through the part model that never trained on it, which answers it
(:mod:`veil.python_backend.selective`), any other row through the one its sequence hash picks, its
answer discarded. Every row does the same work, so a training text is not slower to answer (run
only on the matches, the extra pass made latency a membership oracle: docs/evaluation.md, "Part
models for whole matches"). Rows sent as logits go through the maps.

What needs no logits runs on a worker thread while the hosted classifier runs (onnxruntime
releases the GIL): the tokens' fingerprints (:class:`veil.python_backend.tokens.Fingerprinter`,
from the tokenizer folder the repository gives this step: the tokenizer step then computes none,
like an undefended deployment's; a fingerprint sent beside the tokens is not used), the member
index's look-up (:func:`veil.python_backend.selective.look_up`) and, when every request of the
batch has its signature, the callers' state. So a row's latency is the forward pass or that work,
whichever is longer, plus the map and the levels; the bytes are the same. The state then records
a request's rows before its logits exist: a request whose forward pass fails still counts as sent.

Fails closed: a missing, corrupt or foreign artifact (or classifier file) raises in ``initialize``
(the model never becomes ready), and any failure of the classifier or the defense at run time is an
error response for the affected requests, never the raw softmax.

Adaptive state comes from the configured backend (:mod:`veil.python_backend.threat_state`):
``state_backend`` ``memory`` (per process: refused with more than one instance, the state would
split) or ``redis`` (shared; ``VEIL_STATE_URL`` overrides ``state_url``), one call per dynamic
batch. When the store does not answer, the batch is served at threat 1 (label-only level), counted
in ``veil_state_fallback_total`` and flagged by the ``veil_state_degraded`` gauge.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from veil import wire
from veil.python_backend.adaptive import AdaptiveConfig, ServiceCost, normalise_client_id, query_signature
from veil.python_backend.artifact import DefenseArtifact, part_model_file
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import NO_SEQUENCE, SIGNATURE_SIZE, without
from veil.python_backend.selective import Lookup
from veil.python_backend.threat_state import StateConfig, ThreatState, make_state
from veil.python_backend.tokens import Fingerprinter
from veil.python_backend.triton.classifier import load_classifier, run_grouped, token_feed
from veil.python_backend.triton.common import (
    CLIENT_ID_KEY,
    device_of,
    internal,
    invalid,
    optional_input,
    parameters,
    request_parameters,
    version_dir,
)
from veil.python_backend.triton.telemetry import Telemetry
from veil.wire import METRICS_FLUSH_S


@dataclass
class _Pending:
    """One request between parsing and its answer (``logits`` None until the hosted classifier ran)."""

    request: int
    rows: int
    client: str
    signature: np.ndarray | None
    sequence: np.ndarray | None
    logits: np.ndarray | None
    threat: float = 0.0


@dataclass(frozen=True)
class _PartRows:
    """Every row's pass through one part model (:meth:`TritonPythonModel._parts_ahead`)."""

    logits: np.ndarray
    """[rows, C]; NaN for rows sent as logits."""
    choice: np.ndarray
    """[rows] the part model each row went through."""

    def held_out(self, rows: np.ndarray, parts: np.ndarray) -> np.ndarray:
        """:data:`~veil.python_backend.selective.HeldOut`: the rows the defense asks for were run
        through the parts it names (both come from the same look-up)."""
        named = parts >= 0  # -1: no whole match, any part's answer (discarded)
        if not np.array_equal(self.choice[rows][named], parts[named]):
            raise RuntimeError("the part models ran on other parts than the defense asks for")
        return self.logits[rows]


@dataclass(frozen=True)
class _Ahead:
    """The worker's share (:meth:`TritonPythonModel._before_logits`)."""

    observed: tuple[list[float], bool] | None
    lookup: Lookup | None
    parts: _PartRows | None
    parts_failed: set[int]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = parameters(args)
        artifact = DefenseArtifact.load(
            version_dir(args) / "defense", expected_classifier_sha256=params["classifier_sha256"]
        )
        device = device_of(args)
        import torch

        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError("mia_defense instance is KIND_GPU but torch sees no CUDA device")
        else:
            torch.set_num_threads(int(params.get("torch_threads", "1")))
        self.classifier = None
        self.fingerprinter: Fingerprinter | None = None
        if params.get("hosts_classifier") == "1":
            self.classifier = load_classifier(
                args, version_dir(args) / "model.onnx", expected_sha256=params["classifier_sha256"]
            )
            # The tokenizer's folder (repositories written since the step fingerprints tokens itself).
            if (version_dir(args) / "tokenizer").is_dir():
                self.fingerprinter = Fingerprinter.from_dir(version_dir(args) / "tokenizer")
        # The leave-out part models answer whole matches of training texts (only with the tokens);
        # DefenseArtifact.load has checked their files' sha256.
        self.parts = [
            load_classifier(args, part_model_file(version_dir(args) / "defense", k), expected_sha256=None)
            for k in range(len(artifact.part_models))
            if self.classifier is not None
        ]
        self.defense = Defense(artifact, config=DefenseConfig(variant=params["variant"]), device=device)
        self.tracker_mask = artifact.tracker_mask()
        adaptive = AdaptiveConfig(
            **{"max_clients": int(params.get("max_clients", "10000")), **json.loads(params.get("adaptive", "{}"))}
        )
        self.state = state_from(params, adaptive=adaptive, instances=instance_count(args))
        self.cost = ServiceCost()
        """This step's seconds per row, for the callers' busy share (hosted: classifier and defense)."""
        self.max_client_id_bytes = adaptive.max_client_id_bytes
        # One worker: the look-up that overlaps the classifier's forward pass (see execute).
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="veil-lookup")
        self.telemetry = Telemetry(
            {"model": args["model_name"], "variant": params["variant"]},
            flush_every_s=float(params.get("metrics_flush_s", str(METRICS_FLUSH_S))),
            instance=args.get("model_instance_name", ""),
        )

    def finalize(self) -> None:
        self.pool.shutdown(wait=True)
        self.telemetry.close()
        self.state.close()

    def _parse(self, i: int, request, feeds: dict) -> _Pending:
        """One request's inputs, checked (``ValueError``: the caller's error, for this request
        alone); its token tensors go into ``feeds`` when the step is to compute its logits."""
        sent = optional_input(request, wire.LOGITS)
        if sent is not None:
            logits = np.asarray(sent, dtype=np.float32)
            self.defense.check(logits)
            rows = len(logits)
        elif self.classifier is not None:
            feed = token_feed(self.classifier, request)
            logits, rows = None, len(next(iter(feed.values())))
        else:
            raise ValueError(f"missing input {wire.LOGITS!r}")
        client = normalise_client_id(request_parameters(request).get(CLIENT_ID_KEY), max_bytes=self.max_client_id_bytes)
        signature = optional_input(request, wire.FINGERPRINT)
        if signature is not None and signature.shape != (rows, SIGNATURE_SIZE):
            raise ValueError(f"fingerprint must have shape [{rows}, {SIGNATURE_SIZE}], got {list(signature.shape)}")
        sequence = optional_input(request, wire.SEQUENCE)
        if sequence is not None and sequence.shape != (rows, 1):
            raise ValueError(f"sequence must have shape [{rows}, 1], got {list(sequence.shape)}")
        if logits is None:
            feeds[i] = feed
        return _Pending(i, rows, client, signature, sequence, logits)

    def _observe(self, batch: list[tuple[str, np.ndarray]]) -> tuple[list[float], bool]:
        """Each request's threat from its caller's state (which records these rows), and whether
        the store failed (then every threat is 1)."""
        observed = self.state.observe(
            [(c, without(np.asarray(s, np.int32), self.tracker_mask)) for c, s in batch], row_cost_s=self.cost.per_row
        )
        return observed.threats, observed.fallback

    def _before_logits(self, pending: list[_Pending], feeds: dict) -> _Ahead:
        """What needs no logits: the tokens' fingerprints (hosted), the member index's look-up of
        every row of ``pending`` in order, when every request has its signature the callers'
        threats (else None: they are observed after the logits, whose fallback fingerprint stands
        in), and the part models' pass (:meth:`_parts_ahead`). The defense reads the signatures
        only through the look-up."""
        if self.fingerprinter is not None:
            for p in pending:
                if p.request in feeds:  # the tokens the classifier sees, not what was sent beside them
                    feed = feeds[p.request]
                    fp = self.fingerprinter(feed["input_ids"], feed["attention_mask"])
                    p.signature, p.sequence = fp[wire.FINGERPRINT], fp[wire.SEQUENCE]
        # The member gate needs every row's signature; a request without one is not gated.
        sig = np.concatenate(
            [
                p.signature if p.signature is not None else np.full((p.rows, SIGNATURE_SIZE), -1, np.int32)
                for p in pending
            ]
        )
        # A request without sequence hashes has its whole matches served as copies.
        seq = np.concatenate(
            [p.sequence[:, 0] if p.sequence is not None else np.full(p.rows, NO_SEQUENCE, np.int64) for p in pending]
        )
        observed = None
        if self.defense.adaptive and all(p.signature is not None for p in pending):
            observed = self._observe([(p.client, p.signature) for p in pending])
        lookup = self.defense.look_up(signatures=sig, sequences=seq, rows=len(sig))
        return _Ahead(observed, lookup, *self._parts_ahead(pending, feeds, lookup, seq))

    def _parts_ahead(
        self, pending: list[_Pending], feeds: dict, lookup: Lookup | None, seq: np.ndarray
    ) -> tuple[_PartRows | None, set[int]]:
        """Every row of ``pending`` that sent tokens through exactly one part model: a whole match
        through the part model that never trained on its text (what the defense reads), any other
        row through the one its sequence hash picks (a balanced, membership-free choice, so a batch
        of non-members splits across the parts as a batch of members does), its answer discarded.
        Returns the rows' logits (NaN for rows sent as logits) and the requests whose part pass
        failed (served as errors: they fail closed). Nothing without part models, or for a variant
        without the member gate's look-up (it reads no part model, for any row)."""
        if not self.parts or not feeds or lookup is None:
            return None, set()
        choice = lookup.parts(self.defense.index)
        free = choice < 0  # no whole match: the sequence hash where the row has one, else its position
        count = len(self.parts)
        choice[free] = np.where(seq != NO_SEQUENCE, np.mod(seq, count), np.arange(len(seq)) % count)[free]
        logits = np.full((len(seq), self.defense.num_classes), np.nan, np.float32)
        starts = np.cumsum([0] + [p.rows for p in pending])[:-1]
        failed: set[int] = set()
        for k, model in enumerate(self.parts):
            rows, sub = {}, {}
            for p, start in zip(pending, starts, strict=True):
                mine = np.flatnonzero(choice[start : start + p.rows] == k) if p.request in feeds else []
                if len(mine):
                    rows[p.request] = start + mine
                    sub[p.request] = {n: v[mine] for n, v in feeds[p.request].items()}
            for i, result in run_grouped(model, sub).items():
                if isinstance(result, Exception):
                    failed.add(i)
                else:
                    logits[rows[i]] = result[model.output_name]
        return _PartRows(logits, choice), failed

    def execute(self, requests: list) -> list:
        started = time.perf_counter()
        responses: list = [None] * len(requests)
        feeds: dict = {}
        pending: list[_Pending] = []
        for i, request in enumerate(requests):
            try:
                pending.append(self._parse(i, request, feeds))
            except ValueError as err:
                responses[i] = invalid(str(err))
                self.telemetry.error()
        if not pending:
            return responses

        results: dict = {}
        try:
            if feeds:  # the worker's share runs while onnxruntime (which releases the GIL) classifies
                future = self.pool.submit(self._before_logits, pending, feeds)
                results = run_grouped(self.classifier, feeds)
                ahead = future.result()
            else:
                ahead = self._before_logits(pending, feeds)
        except Exception as err:
            for p in pending:
                responses[p.request] = internal(f"defense failed; no output returned: {err}")
            self.telemetry.error(len(pending))
            return responses
        observed, lookup = ahead.observed, ahead.lookup
        batch: list[_Pending] = []
        for k, p in enumerate(pending):
            if p.logits is None:
                result = results[p.request]
                if p.request in ahead.parts_failed:
                    responses[p.request] = internal("leave-out part model failed; no output returned")
                    self.telemetry.error()
                    continue
                if isinstance(result, Exception):
                    responses[p.request] = internal(f"classifier failed; no output returned: {result}")
                    self.telemetry.error()
                    continue
                p.logits = np.asarray(result[self.classifier.output_name], dtype=np.float32)
                try:
                    self.defense.check(p.logits)
                except ValueError as err:
                    responses[p.request] = invalid(str(err))
                    self.telemetry.error()
                    continue
            p.threat = observed[0][k] if observed is not None else 0.0
            batch.append(p)
        if not batch:
            return responses
        parts = ahead.parts
        if len(batch) < len(pending):  # the survivors' rows of the look-up and of the part pass
            served = {p.request for p in batch}
            keep = np.repeat([p.request in served for p in pending], [p.rows for p in pending])
            lookup = lookup.take(keep)
            parts = None if parts is None else _PartRows(parts.logits[keep], parts.choice[keep])
        fallback = observed[1] if observed is not None else False
        if self.defense.adaptive and observed is None:
            threats, fallback = self._observe([(p.client, query_signature(p.logits, p.signature)) for p in batch])
            for p, t in zip(batch, threats, strict=True):
                p.threat = t
        z = np.concatenate([p.logits for p in batch])
        threat = np.concatenate([np.full(p.rows, p.threat) for p in batch])
        held_out = None if parts is None else parts.held_out
        try:
            out = self.defense(z, threat=threat, held_out=held_out, lookup=lookup, checked=True)
        except Exception as err:
            for p in batch:
                responses[p.request] = internal(f"defense failed; no output returned: {err}")
            self.telemetry.error(len(batch))
            return responses
        start = 0
        for p in batch:
            probs = out.probabilities[start : start + p.rows]
            label = out.labels[start : start + p.rows, None]
            responses[p.request] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(wire.PROBABILITIES, probs), pb_utils.Tensor(wire.LABEL, label)]
            )
            start += p.rows
        self.cost.add(time.perf_counter() - started, len(z))
        self.telemetry.record(
            out,
            self.state.tracked(),
            self.state.memory_bytes(),
            fallback_rows=len(z) if fallback else 0,
            degraded=self.state.problem() is not None,
        )
        return responses


def instance_count(args: dict) -> int:
    """Instances of this model in the server (the model config's instance groups; a GPU group's
    count is per listed GPU)."""
    groups = json.loads(args["model_config"]).get("instance_group", [])
    return sum(int(g.get("count", 1)) * max(1, len(g.get("gpus", []))) for g in groups) or 1


def state_from(params: dict[str, str], *, adaptive: AdaptiveConfig, instances: int) -> ThreatState:
    """The adaptive-state backend the model config names; refuses per-process state across several
    instances (each would keep its own client table and see a client's traffic separately)."""
    config = StateConfig(
        backend=params.get("state_backend", "memory"),
        url=os.environ.get("VEIL_STATE_URL") or params.get("state_url") or StateConfig().url,
        timeout_s=float(params.get("state_timeout_ms", "50")) / 1000,
    )
    state = make_state(config=config, adaptive=adaptive)
    if instances > 1 and not state.shared:
        raise RuntimeError(
            f"{instances} mia_defense instances with the {config.backend!r} state backend would each keep their own"
            " client table; use state_backend 'redis' (ServingOptions.state_backend) or one instance"
        )
    return state
