"""Triton model ``mia_defense``: logits (or the classifier's token inputs) in, defended probabilities and label out.

In the ``hosted`` layout (the default, :mod:`veil.model_repository.spec`) the step runs the ONNX
classifier itself, so the defended ensemble is tokenizer -> mia_defense: the same number of
python-backend hops as an undefended tokenizer -> classifier deployment, and the defense adds only
its own compute. Logits sent directly (benchmarks, tests, the ``ensemble`` layout) are served as
before. Hosted, it also runs the build's leave-out part models (``defense/part<k>.onnx``) on the
rows that wholly match a training text, which they answer (:mod:`veil.python_backend.selective`);
rows sent as logits go through the maps.

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

import numpy as np
import triton_python_backend_utils as pb_utils

from veil import wire
from veil.python_backend.adaptive import AdaptiveConfig, normalise_client_id, query_signature
from veil.python_backend.artifact import DefenseArtifact, part_model_file
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.fingerprint import NO_SEQUENCE, SIGNATURE_SIZE, without
from veil.python_backend.threat_state import StateConfig, ThreatState, make_state
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
        if params.get("hosts_classifier") == "1":
            self.classifier = load_classifier(
                args, version_dir(args) / "model.onnx", expected_sha256=params["classifier_sha256"]
            )
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
        self.max_client_id_bytes = adaptive.max_client_id_bytes
        self.telemetry = Telemetry(
            {"model": args["model_name"], "variant": params["variant"]},
            flush_every_s=float(params.get("metrics_flush_s", str(METRICS_FLUSH_S))),
            instance=args.get("model_instance_name", ""),
        )

    def finalize(self) -> None:
        self.telemetry.close()
        self.state.close()

    def _logits(self, requests: list, responses: list, feeds: dict) -> dict[int, np.ndarray]:
        """Each request's logits: sent, or computed by the hosted classifier (grouped by length);
        ``feeds`` gets the token tensors of the requests that sent them."""
        logits: dict[int, np.ndarray] = {}
        for i, request in enumerate(requests):
            try:
                sent = optional_input(request, wire.LOGITS)
                if sent is not None:
                    logits[i] = np.asarray(sent, dtype=np.float32)
                elif self.classifier is not None:
                    feeds[i] = token_feed(self.classifier, request)
                else:
                    raise ValueError(f"missing input {wire.LOGITS!r}")
            except ValueError as err:
                responses[i] = invalid(str(err))
                self.telemetry.error()
        for i, result in run_grouped(self.classifier, feeds).items() if feeds else ():
            if isinstance(result, Exception):
                responses[i] = internal(f"classifier failed; no output returned: {result}")
                self.telemetry.error()
            else:
                logits[i] = np.asarray(result[self.classifier.output_name], dtype=np.float32)
        return logits

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batch: list[tuple[int, np.ndarray, str, np.ndarray | None, np.ndarray | None]] = []
        max_bytes = self.max_client_id_bytes
        feeds: dict = {}
        for i, logits in sorted(self._logits(requests, responses, feeds).items()):
            request = requests[i]
            try:
                self.defense.check(logits)  # per request, so one bad request fails alone
                client = normalise_client_id(request_parameters(request).get(CLIENT_ID_KEY), max_bytes=max_bytes)
                signature = optional_input(request, wire.FINGERPRINT)
                if signature is not None and signature.shape != (len(logits), SIGNATURE_SIZE):
                    raise ValueError(
                        f"fingerprint must have shape [{len(logits)}, {SIGNATURE_SIZE}], got {list(signature.shape)}"
                    )
                sequence = optional_input(request, wire.SEQUENCE)
                if sequence is not None and sequence.shape != (len(logits), 1):
                    raise ValueError(f"sequence must have shape [{len(logits)}, 1], got {list(sequence.shape)}")
            except ValueError as err:
                responses[i] = invalid(str(err))
                self.telemetry.error()
                continue
            batch.append((i, logits, client, signature, sequence))
        if batch:
            threats, fallback = [0.0] * len(batch), False
            if self.defense.adaptive:
                observed = self.state.observe(
                    [(c, without(query_signature(z, s), self.tracker_mask)) for _, z, c, s, _ in batch]
                )
                threats, fallback = observed.threats, observed.fallback
            z = np.concatenate([b[1] for b in batch])
            threat = np.concatenate([np.full(len(b[1]), t) for b, t in zip(batch, threats, strict=True)])
            # The member gate needs every row's signature; a request without one is not gated.
            sig = np.concatenate(
                [b[3] if b[3] is not None else np.full((len(b[1]), SIGNATURE_SIZE), -1, np.int32) for b in batch]
            )
            # A request without sequence hashes has its whole matches served as copies.
            seq = np.concatenate(
                [b[4][:, 0] if b[4] is not None else np.full(len(b[1]), NO_SEQUENCE, np.int64) for b in batch]
            )
            held_out = self._held_out([(b[0], len(b[1])) for b in batch], feeds)
            try:
                out = self.defense(z, threat=threat, signatures=sig, sequences=seq, held_out=held_out, checked=True)
            except Exception as err:
                for i, *_ in batch:
                    responses[i] = internal(f"defense failed; no output returned: {err}")
                self.telemetry.error(len(batch))
                return responses
            start = 0
            for i, logits, *_ in batch:
                n = len(logits)
                probs = out.probabilities[start : start + n]
                label = out.labels[start : start + n, None]
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(wire.PROBABILITIES, probs), pb_utils.Tensor(wire.LABEL, label)]
                )
                start += n
            self.telemetry.record(
                out,
                self.state.tracked(),
                self.state.memory_bytes(),
                fallback_rows=len(z) if fallback else 0,
                degraded=self.state.problem() is not None,
            )
        return responses

    def _held_out(self, spans: list[tuple[int, int]], feeds: dict):
        """:data:`~veil.python_backend.selective.HeldOut` over this batch (requests ``spans``: (request,
        rows) in batch order): part model ``k`` run on the asked rows of each request that sent
        tokens, grouped by length; NaN for rows sent as logits. None without part models. A part
        model's failure raises (the batch fails closed)."""
        if not self.parts:
            return None
        owner = np.concatenate([np.full(n, i) for i, n in spans])
        local = np.concatenate([np.arange(n) for _, n in spans])
        classes = self.defense.num_classes

        def held_out(rows: np.ndarray, parts: np.ndarray) -> np.ndarray:
            out = np.full((len(rows), classes), np.nan, np.float32)
            for k in np.unique(parts):
                pick = np.flatnonzero((parts == k) & np.isin(owner[rows], list(feeds)))
                sub = {}
                for i in np.unique(owner[rows[pick]]):
                    mine = pick[owner[rows[pick]] == i]
                    sub[int(i)] = (mine, {n: v[local[rows[mine]]] for n, v in feeds[int(i)].items()})
                model = self.parts[int(k)]
                results = run_grouped(model, {i: f for i, (_, f) in sub.items()})
                for i, result in results.items():
                    if isinstance(result, Exception):
                        raise RuntimeError(f"leave-out part model {k} failed: {result}") from result
                    out[sub[i][0]] = result[model.output_name]
            return out

        return held_out


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
