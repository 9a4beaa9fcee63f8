"""The one description of Veil's Triton models; every config.pbtxt is rendered from it.

Layout (several ``--model-repository`` flags, one source of truth):

- ``common/``: ``tokenizer``, the ensembles (``veil_defended``, one per ablation variant, and in
  benchmark mode ``veil_raw`` with its ``softmax`` step and ``veil_undefended``).
- ``embedded/``: ``classifier`` as a python-backend model running the ONNX file with
  onnxruntime, and ``mia_defense*`` on KIND_CPU (the pip-installed tritonserver).
- ``nvidia/``: ``classifier`` with ``backend: "onnxruntime"`` and ``mia_defense*`` on KIND_GPU
  (NVIDIA's tritonserver container on a GPU host).

Serve ``common`` plus exactly one platform folder.

Defense layouts (:data:`LAYOUTS`): ``hosted`` (default) gives each defense step its own onnxruntime
session of the classifier, so ``veil_defended`` is tokenizer -> mia_defense, as many python-backend
hops as an undefended deployment (the step fingerprints the tokens itself, so the tokenizer does no
more than an undefended deployment's); ``ensemble`` is tokenizer -> classifier -> mia_defense (logits
cross one more process boundary). Benchmark mode adds the references the load test compares
against: ``veil_undefended`` (tokenizer -> ``classifier_softmax``, the exported graph with softmax
and argmax inside it: what a user without Veil serves) and ``veil_raw`` (tokenizer -> classifier ->
a python softmax step, the defended path's shape without the defense).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from veil import wire
from veil.python_backend import threat_state, variants
from veil.python_backend.adaptive import AdaptiveConfig
from veil.python_backend.fingerprint import SIGNATURE_SIZE

PLATFORMS = ("embedded", "nvidia")
MODES = ("production", "benchmark")
LAYOUTS = ("hosted", "ensemble")
DEFENDED = variants.get("veil").ensemble
RAW = "veil_raw"
UNDEFENDED = "veil_undefended"
BASELINE_CLASSIFIER = "classifier_softmax"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class Step:
    model: str
    inputs: dict[str, str]  # step input -> ensemble tensor
    outputs: dict[str, str]  # step output -> ensemble tensor


@dataclass
class Model:
    name: str
    backend: str  # "python", "onnxruntime" or "ensemble"
    inputs: list[Tensor]
    outputs: list[Tensor]
    max_batch_size: int
    repository: str  # "common" or a platform
    adapter: str = ""  # python backend: module exporting TritonPythonModel
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1
    max_queue_delay_us: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    assets: tuple[str, ...] = ()
    """What the writer puts in the version folder: ``tokenizer``, ``classifier`` (model.onnx),
    ``classifier_softmax`` (model.onnx with softmax and argmax appended), ``defense``."""


@dataclass(frozen=True)
class ServingOptions:
    """What varies between deployments; everything else is fixed by :func:`describe`."""

    input_names: tuple[str, ...]
    num_classes: int
    label_names: tuple[str, ...]
    classifier_sha256: str
    max_length: int = 128
    max_text_bytes: int = 200_000
    max_batch_size: int = 256
    variants: tuple[str, ...] = ("veil",)
    mode: str = "benchmark"
    max_queue_delay_us: int = 0
    tokenizer_instances: int = 1
    classifier_instances: int = 1
    classifier_threads: int = 1
    """onnxruntime intra-op threads of every python-hosted classifier session (0: onnxruntime's default,
    one per core). One, because the sessions share the cores with the tokenizer, the defense and the
    server's own threads: on the 2-core host it halved the CPU per request (docs/load-testing.md);
    scale with ``classifier_instances`` instead."""
    classifier_spin: int = 0
    """1: idle onnxruntime pool threads busy-wait (onnxruntime's default); 0: they sleep."""
    max_clients: int = 10_000
    defense_instances: int = 1
    """``mia_defense*`` instances; more than one needs a shared state backend."""
    state_backend: str = "memory"
    """Where adaptive-intensity state lives (:mod:`veil.python_backend.threat_state`): ``memory`` (per
    process) or ``redis`` (shared by every instance and replica)."""
    state_url: str = ""
    """Redis URL written into the config (empty: the backend's default); ``VEIL_STATE_URL`` in the
    server's environment overrides it, so one repository serves every deployment."""
    state_timeout_ms: int = 50
    """Past this the batch is served at threat 1 (the store is down or slow)."""
    adaptive: str = ""
    """JSON object of :class:`~veil.python_backend.adaptive.AdaptiveConfig` overrides (empty: defaults)."""
    defense_layout: str = "hosted"


def defense_model_name(variant: str) -> str:
    return variants.get(variant).step_model


def ensemble_name(variant: str) -> str:
    return variants.get(variant).ensemble


def _check_state(opts: ServingOptions) -> dict[str, str]:
    """The defense step's state parameters; refuses what would split or misname the state."""
    if opts.state_backend not in threat_state.BACKENDS:
        raise ValueError(f"state_backend must be one of {threat_state.BACKENDS}, got {opts.state_backend!r}")
    if opts.defense_instances < 1:
        raise ValueError("defense_instances must be at least 1")
    if opts.defense_instances > 1 and opts.state_backend == "memory":
        raise ValueError(
            f"defense_instances={opts.defense_instances} with state_backend='memory' would give every instance its"
            " own client table (a client spread over them looks slower); use state_backend='redis'"
        )
    if opts.adaptive:
        AdaptiveConfig(**json.loads(opts.adaptive))  # unknown fields raise here, not in Triton
    params = {"state_backend": opts.state_backend, "state_timeout_ms": str(opts.state_timeout_ms)}
    if opts.state_url:
        params["state_url"] = opts.state_url
    if opts.adaptive:
        params["adaptive"] = opts.adaptive
    return params


def describe(opts: ServingOptions, platform: str) -> list[Model]:
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {PLATFORMS}")
    if opts.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if opts.defense_layout not in LAYOUTS:
        raise ValueError(f"defense_layout must be one of {LAYOUTS}")
    if "veil" not in opts.variants:
        raise ValueError("the served variants must include 'veil'")
    unknown = [v for v in opts.variants if v not in variants.SERVED]
    if unknown:
        raise ValueError(f"unknown served variant(s) {unknown}; choose from {variants.SERVED}")
    state = _check_state(opts)
    mbs = opts.max_batch_size
    c = opts.num_classes
    token_tensors = [Tensor(n, "TYPE_INT64", (-1,)) for n in opts.input_names]
    fingerprint = Tensor(wire.FINGERPRINT, "TYPE_INT32", (SIGNATURE_SIZE,))
    sequence = Tensor(wire.SEQUENCE, "TYPE_INT64", (1,))
    text = Tensor(wire.TEXT, "TYPE_STRING", (1,))
    logits = Tensor(wire.LOGITS, "TYPE_FP32", (c,))
    outputs = [Tensor(wire.PROBABILITIES, "TYPE_FP32", (c,)), Tensor(wire.LABEL, "TYPE_INT64", (1,))]
    gpu = platform == "nvidia"
    delay = opts.max_queue_delay_us

    models = [
        Model(
            "tokenizer",
            "python",
            [text],
            [*token_tensors, fingerprint, sequence],
            mbs,
            "common",
            adapter="veil.python_backend.triton.tokenizer",
            instance_count=opts.tokenizer_instances,
            assets=("tokenizer",),
            max_queue_delay_us=delay,
            parameters={
                "input_names": ",".join(opts.input_names),
                "max_length": str(opts.max_length),
                "max_text_bytes": str(opts.max_text_bytes),
            },
        ),
    ]
    hosted = opts.defense_layout == "hosted"
    if not hosted or opts.mode == "benchmark":  # hosted production: no step needs a classifier of its own
        models.append(_classifier("classifier", token_tensors, [logits], opts, platform, asset="classifier"))
    # Hosted: the step takes the token tensors (and runs the classifier) or logits sent directly.
    step_inputs = [
        Tensor(wire.LOGITS, "TYPE_FP32", (c,), optional=hosted),
        *([Tensor(t.name, t.dtype, t.dims, optional=True) for t in token_tensors] if hosted else []),
        Tensor(wire.FINGERPRINT, "TYPE_INT32", (SIGNATURE_SIZE,), optional=True),
        Tensor(wire.SEQUENCE, "TYPE_INT64", (1,), optional=True),
    ]
    for variant in opts.variants:
        name = defense_model_name(variant)
        models.append(
            Model(
                name,
                "python",
                step_inputs,
                outputs,
                mbs,
                platform,
                adapter="veil.python_backend.triton.mia_defense",
                instance_kind="KIND_GPU" if gpu else "KIND_CPU",
                # More than one only with shared state (checked above).
                instance_count=opts.defense_instances,
                max_queue_delay_us=delay,
                parameters={
                    "variant": variant,
                    "classifier_sha256": opts.classifier_sha256,
                    "max_clients": str(opts.max_clients),
                    **state,
                    "hosts_classifier": "1" if hosted else "0",
                    **(_session_parameters(opts) if hosted else {}),
                },
                # Hosted, the step fingerprints the tokens itself (its tokenizer folder) while the
                # classifier runs; the tokenizer step then computes no fingerprint for it.
                assets=("defense", "classifier", "tokenizer") if hosted else ("defense",),
            )
        )
        models.append(_ensemble(ensemble_name(variant), name, opts, hosted=hosted, fingerprint=not hosted))
    if opts.mode == "benchmark":
        models.append(
            Model(
                "softmax",
                "python",
                [logits],
                outputs,
                mbs,
                "common",
                adapter="veil.python_backend.triton.softmax",
                max_queue_delay_us=delay,
            )
        )
        models.append(_ensemble(RAW, "softmax", opts, hosted=False))
        models.append(
            _classifier(BASELINE_CLASSIFIER, token_tensors, outputs, opts, platform, asset="classifier_softmax")
        )
        models.append(_ensemble(UNDEFENDED, BASELINE_CLASSIFIER, opts, hosted=True))
    return models


def _session_parameters(opts: ServingOptions) -> dict[str, str]:
    """onnxruntime settings of a python-hosted classifier session."""
    return {"threads": str(opts.classifier_threads), "spin": str(opts.classifier_spin)}


def _classifier(
    name: str, inputs: list[Tensor], outputs: list[Tensor], opts: ServingOptions, platform: str, *, asset: str
) -> Model:
    """An ONNX classifier: onnxruntime backend on GPU (NVIDIA's server), a python-backend onnxruntime
    session on the embedded server (no onnxruntime backend there). The file's hash is checked on the
    embedded server only for the exported graph itself (``classifier``)."""
    shared = {
        "instance_count": opts.classifier_instances,
        "max_queue_delay_us": opts.max_queue_delay_us,
        "assets": (asset,),
    }
    if platform == "nvidia":
        return Model(
            name, "onnxruntime", inputs, outputs, opts.max_batch_size, platform, instance_kind="KIND_GPU", **shared
        )
    parameters = {"classifier_sha256": opts.classifier_sha256} if asset == "classifier" else {}
    return Model(
        name,
        "python",
        inputs,
        outputs,
        opts.max_batch_size,
        platform,
        adapter="veil.python_backend.triton.classifier",
        parameters=parameters | _session_parameters(opts),
        **shared,
    )


def _ensemble(name: str, last: str, opts: ServingOptions, *, hosted: bool, fingerprint: bool = False) -> Model:
    """TEXT -> tokenizer -> [classifier ->] ``last`` -> PROBABILITIES, LABEL. ``hosted``: ``last``
    takes the token tensors itself (it runs the classifier)."""
    tokens_map = {n: n for n in opts.input_names}
    extra = {wire.FINGERPRINT: wire.FINGERPRINT, wire.SEQUENCE: wire.SEQUENCE} if fingerprint else {}
    served = {wire.PROBABILITIES: wire.PROBABILITIES, wire.LABEL: wire.LABEL}
    steps = [Step("tokenizer", {wire.TEXT: wire.TEXT}, {**tokens_map, **extra})]
    if hosted:
        steps.append(Step(last, {**tokens_map, **extra}, served))
    else:
        steps.append(Step("classifier", tokens_map, {wire.LOGITS: wire.LOGITS}))
        steps.append(Step(last, {wire.LOGITS: wire.LOGITS, **extra}, served))
    c = opts.num_classes
    return Model(
        name,
        "ensemble",
        [Tensor(wire.TEXT, "TYPE_STRING", (1,))],
        [Tensor(wire.PROBABILITIES, "TYPE_FP32", (c,)), Tensor(wire.LABEL, "TYPE_INT64", (1,))],
        opts.max_batch_size,
        "common",
        parameters={wire.LABEL_NAMES_PARAMETER: json.dumps(list(opts.label_names))},
        steps=steps,
    )


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render(model: Model) -> str:
    """config.pbtxt text for one model."""
    lines = [f'name: "{model.name}"']
    if model.backend == "ensemble":
        lines.append('platform: "ensemble"')
    else:
        lines.append(f'backend: "{model.backend}"')
    lines.append(f"max_batch_size: {model.max_batch_size}")
    for key, tensors in (("input", model.inputs), ("output", model.outputs)):
        body = ",\n".join(
            f'  {{ name: "{t.name}" data_type: {t.dtype} dims: [ {", ".join(map(str, t.dims))} ]'
            + (" optional: true" if t.optional else "")
            + " }"
            for t in tensors
        )
        lines.append(f"{key} [\n{body}\n]")
    if model.backend == "ensemble":
        steps = []
        for s in model.steps:
            ins = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in s.inputs.items())
            outs = " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in s.outputs.items())
            steps.append(f'    {{ model_name: "{s.model}" model_version: -1 {ins} {outs} }}')
        lines.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
    else:
        lines.append(f"instance_group [ {{ kind: {model.instance_kind} count: {model.instance_count} }} ]")
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {model.max_queue_delay_us} }}")
    for k, v in sorted(model.parameters.items()):
        lines.append(f'parameters {{ key: "{k}" value: {{ string_value: "{_escape(v)}" }} }}')
    return "\n".join(lines) + "\n"
