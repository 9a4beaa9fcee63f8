from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from veil.model_repository.spec import (
    BASELINE_CLASSIFIER,
    DEFENDED,
    LAYOUTS,
    RAW,
    UNDEFENDED,
    ServingOptions,
    describe,
    render,
)

OPTS = ServingOptions(
    input_names=("input_ids", "attention_mask"),
    num_classes=4,
    label_names=("World", "Sports", "Business", "Sci/Tech"),
    classifier_sha256="ab" * 32,
    variants=("veil", "random_noise"),
)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("platform", ["embedded", "nvidia"])
def test_configs_parse_and_ensembles_are_consistent(platform, layout):
    opts = ServingOptions(**{**OPTS.__dict__, "defense_layout": layout})
    models = {m.name: m for m in describe(opts, platform)}
    configs = {name: parse(render(m)) for name, m in models.items()}
    assert {
        DEFENDED,
        RAW,
        UNDEFENDED,
        "veil_random_noise",
        "tokenizer",
        "classifier",
        BASELINE_CLASSIFIER,
        "mia_defense",
        "mia_defense_random_noise",
        "softmax",
    } == set(configs)
    for cfg in configs.values():
        assert cfg.max_batch_size == 256
        if cfg.platform != "ensemble":
            assert cfg.HasField("dynamic_batching")
    for name in (DEFENDED, RAW, UNDEFENDED, "veil_random_noise"):
        steps = configs[name].ensemble_scheduling.step
        assert steps[0].model_name == "tokenizer"
        produced = {"text"}
        for s in steps:
            step_inputs = {t.name: t.optional for t in configs[s.model_name].input}
            step_outputs = {t.name for t in configs[s.model_name].output}
            assert set(s.input_map) <= set(step_inputs)
            assert all(optional for n, optional in step_inputs.items() if n not in s.input_map)
            assert set(s.input_map.values()) <= produced  # every step reads what an earlier one wrote
            assert set(s.output_map) <= step_outputs
            produced |= set(s.output_map.values())
        assert {"probabilities", "label"} <= produced
    chains = {name: [s.model_name for s in configs[name].ensemble_scheduling.step] for name in (DEFENDED, RAW)}
    # The undefended baseline: no python step after the classifier (softmax and argmax in the graph).
    assert [s.model_name for s in configs[UNDEFENDED].ensemble_scheduling.step] == ["tokenizer", BASELINE_CLASSIFIER]
    assert chains[RAW] == ["tokenizer", "classifier", "softmax"]
    if layout == "hosted":  # the defense step runs the classifier: as many hops as the baseline
        assert chains[DEFENDED] == ["tokenizer", "mia_defense"]
        hosted_step = configs[DEFENDED].ensemble_scheduling.step[1]
        assert {"input_ids", "attention_mask"} <= set(hosted_step.input_map)
        # The step fingerprints the tokens itself: the tokenizer is asked for no more than the baseline's.
        assert not {"fingerprint", "sequence"} & set(hosted_step.input_map)
        assert set(configs[DEFENDED].ensemble_scheduling.step[0].output_map) == set(
            configs[UNDEFENDED].ensemble_scheduling.step[0].output_map
        )
        assert models["mia_defense"].assets == ("defense", "classifier", "tokenizer")
    else:
        assert chains[DEFENDED] == ["tokenizer", "classifier", "mia_defense"]
        assert {"fingerprint", "sequence"} <= set(configs[DEFENDED].ensemble_scheduling.step[2].input_map)
        assert models["mia_defense"].assets == ("defense",)
    assert configs["mia_defense"].parameters["hosts_classifier"].string_value == ("1" if layout == "hosted" else "0")
    classifier = configs["classifier"]
    if platform == "nvidia":
        for name in ("classifier", BASELINE_CLASSIFIER):
            assert configs[name].backend == "onnxruntime"
            assert configs[name].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert configs["mia_defense"].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    else:
        assert classifier.backend == "python" and configs[BASELINE_CLASSIFIER].backend == "python"
    assert models[BASELINE_CLASSIFIER].assets == ("classifier_softmax",)
    assert configs["mia_defense"].instance_group[0].count == 1
    # Same name and I/O for both classifier forms.
    other_platform = "nvidia" if platform == "embedded" else "embedded"
    for name in ("classifier", BASELINE_CLASSIFIER):
        other = parse(render({m.name: m for m in describe(opts, other_platform)}[name]))
        assert list(other.input) == list(configs[name].input) and list(other.output) == list(configs[name].output)


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="defense_layout"):
        describe(ServingOptions(**{**OPTS.__dict__, "defense_layout": "fused"}), "embedded")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_production_mode_has_no_raw_path(layout):
    opts = ServingOptions(**{**OPTS.__dict__, "mode": "production", "defense_layout": layout})
    models = {m.name for m in describe(opts, "embedded")}
    assert RAW not in models and "softmax" not in models and DEFENDED in models
    assert UNDEFENDED not in models and BASELINE_CLASSIFIER not in models
    # hosted: the defense steps run the classifier, so no stub holds a second copy of it
    assert ("classifier" in models) == (layout == "ensemble")


def test_label_names_survive_the_round_trip():
    names = ("a, b", 'say "hi"', "back\\slash")
    opts = ServingOptions(**{**OPTS.__dict__, "label_names": names})
    cfg = parse(render({m.name: m for m in describe(opts, "embedded")}[DEFENDED]))
    assert json.loads(cfg.parameters["label_names"].string_value) == list(names)


def test_veil_must_be_served():
    with pytest.raises(ValueError, match="must include 'veil'"):
        describe(ServingOptions(**{**OPTS.__dict__, "variants": ("perturb_all",)}), "embedded")


def test_session_settings_reach_every_python_hosted_classifier():
    """classifier_threads / classifier_spin go to each onnxruntime session the embedded server runs
    (the classifier, the baseline's graph, each hosted defense step): one sleeping thread by default."""
    tuned = ServingOptions(**{**OPTS.__dict__, "classifier_threads": 0, "classifier_spin": 1})
    sessions = ("classifier", BASELINE_CLASSIFIER, "mia_defense", "mia_defense_random_noise")
    for opts, want in ((OPTS, {"threads": "1", "spin": "0"}), (tuned, {"threads": "0", "spin": "1"})):
        models = {m.name: m for m in describe(opts, "embedded")}
        for name in sessions:
            assert {k: models[name].parameters.get(k) for k in want} == want
        assert "threads" not in models["tokenizer"].parameters
    ensemble = {
        m.name: m for m in describe(ServingOptions(**{**OPTS.__dict__, "defense_layout": "ensemble"}), "embedded")
    }
    assert "threads" not in ensemble["mia_defense"].parameters  # fed logits: no session of its own
