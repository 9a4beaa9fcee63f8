from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from veil.model_repository.spec import DEFENDED, RAW, ServingOptions, describe, render

OPTS = ServingOptions(
    input_names=("input_ids", "attention_mask"),
    num_classes=4,
    label_names=("World", "Sports", "Business", "Sci/Tech"),
    classifier_sha256="ab" * 32,
    variants=("veil", "random_noise"),
)


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("platform", ["embedded", "nvidia"])
def test_configs_parse_and_ensembles_are_consistent(platform):
    models = {m.name: m for m in describe(OPTS, platform)}
    configs = {name: parse(render(m)) for name, m in models.items()}
    assert {
        DEFENDED,
        RAW,
        "veil_random_noise",
        "tokenizer",
        "classifier",
        "mia_defense",
        "mia_defense_random_noise",
        "softmax",
    } == set(configs)
    for cfg in configs.values():
        assert cfg.max_batch_size == 256
        if cfg.platform != "ensemble":
            assert cfg.HasField("dynamic_batching")
    for name in (DEFENDED, RAW, "veil_random_noise"):
        steps = configs[name].ensemble_scheduling.step
        assert [s.model_name for s in steps][:2] == ["tokenizer", "classifier"]
        for s in steps:
            step_inputs = {t.name for t in configs[s.model_name].input}
            step_outputs = {t.name for t in configs[s.model_name].output}
            assert set(s.input_map) == step_inputs
            assert set(s.output_map) <= step_outputs
    classifier = configs["classifier"]
    if platform == "nvidia":
        assert classifier.backend == "onnxruntime"
        assert classifier.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert configs["mia_defense"].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    else:
        assert classifier.backend == "python"
    assert configs["mia_defense"].instance_group[0].count == 1
    # Same name and I/O for both classifier forms.
    other = parse(
        render({m.name: m for m in describe(OPTS, "nvidia" if platform == "embedded" else "embedded")}["classifier"])
    )
    assert list(other.input) == list(classifier.input) and list(other.output) == list(classifier.output)


def test_production_mode_has_no_raw_path():
    models = {m.name for m in describe(ServingOptions(**{**OPTS.__dict__, "mode": "production"}), "embedded")}
    assert RAW not in models and "softmax" not in models and DEFENDED in models


def test_label_names_survive_the_round_trip():
    names = ("a, b", 'say "hi"', "back\\slash")
    opts = ServingOptions(**{**OPTS.__dict__, "label_names": names})
    cfg = parse(render({m.name: m for m in describe(opts, "embedded")}[DEFENDED]))
    assert json.loads(cfg.parameters["label_names"].string_value) == list(names)


def test_veil_must_be_served():
    with pytest.raises(ValueError, match="must include 'veil'"):
        describe(ServingOptions(**{**OPTS.__dict__, "variants": ("perturb_all",)}), "embedded")
