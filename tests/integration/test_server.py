"""The real tritonserver serving the tiny build, over HTTP and gRPC."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from veil.client.triton import InferenceServerException, VeilClient
from veil.export.data import dedupe, load_file
from veil.export.pipeline import load_splits
from veil.model_repository.spec import DEFENDED, RAW, UNDEFENDED
from veil.python_backend.artifact import DefenseArtifact
from veil.python_backend.defense import Defense, DefenseConfig
from veil.python_backend.probabilities import softmax
from veil.wire import METRICS_FLUSH_S

from ..conftest import TINY_VARIANTS

pytestmark = pytest.mark.integration
PROTOCOLS = ["http", "grpc"]
NEUTRAL = ["the film", "it was a movie", "the cast and the plot", "a scene of the story", "this is it"]
_ids = itertools.count()


def fresh_id(tag: str) -> str:
    return f"{tag}-{next(_ids)}"


@pytest.fixture(scope="module")
def eval_texts(tiny_build) -> tuple[list[str], np.ndarray]:
    info = json.loads((tiny_build / "build.json").read_text())
    ds = dedupe(load_file(info["config"]["dataset"]))
    splits = load_splits(tiny_build)
    texts = splits.take(ds, "member_eval").texts[:60] + splits.take(ds, "nonmember_eval").texts[:60]
    labels = np.r_[splits.take(ds, "member_eval").labels[:60], splits.take(ds, "nonmember_eval").labels[:60]]
    return texts, labels


def client_for(server, protocol: str) -> VeilClient:
    return VeilClient(server.http_url if protocol == "http" else server.grpc_url, protocol=protocol)


def status_of(err: InferenceServerException) -> str:
    return str(err.status())


def is_invalid_argument(err: InferenceServerException, protocol: str) -> bool:
    return status_of(err) == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_defended_labels_equal_raw_and_outputs_are_probabilities(server, eval_texts, protocol):
    texts, _ = eval_texts
    with client_for(server, protocol) as c:
        raw_p, raw_l = c.classify(texts, model=RAW)
        def_p, def_l = c.classify(texts, model=DEFENDED, client_id=fresh_id("labels"))
    assert (def_l == raw_l).all()
    assert (def_p.argmax(1) == raw_l).all()
    for p in (raw_p, def_p):
        assert p.dtype == np.float32 and np.isfinite(p).all()
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert (def_p != raw_p).any(axis=1).mean() > 0.5  # the tiny model is overfit: most rows are risky


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_undefended_baseline_serves_the_raw_model(server, eval_texts, protocol):
    """``veil_undefended`` (tokenizer -> classifier with softmax and argmax inside its ONNX graph, no
    python step after it) answers what the python softmax step of ``veil_raw`` answers, and its
    two steps are the tokenizer and that graph."""
    texts, _ = eval_texts
    with client_for(server, protocol) as c:
        raw_p, raw_l = c.classify(texts, model=RAW)
        base_p, base_l = c.classify(texts, model=UNDEFENDED)
    assert base_p.dtype == np.float32 and base_p.shape == raw_p.shape
    np.testing.assert_allclose(base_p, raw_p, atol=1e-6)
    assert (base_l == raw_l).all()
    config = requests.get(f"http://{server.http_url}/v2/models/{UNDEFENDED}/config", timeout=10).json()
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == ["tokenizer", "classifier_softmax"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_high_risk_is_perturbed_and_low_risk_is_untouched(server, tiny_build, eval_texts, protocol):
    """The level-set ablation through its defense step (benchmark mode exposes it): a sharp output
    is perturbed, a near-tie (the least risky output there is) comes back bit-identical to raw."""
    art = DefenseArtifact.load(tiny_build / "defense")
    logits = np.array([[3.0, -3.0], [-2.5, 3.0], [0.01, 0.0], [0.0, 0.02]], np.float32)
    local = Defense(art, config=DefenseConfig(variant="levelset"))(logits)
    tau = art.thresholds(local.labels)
    assert (local.risk_before[:2] > tau[:2]).all() and (local.risk_before[2:] < tau[2:]).all()
    assert not local.exhausted.any()
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    inp = mod.InferInput("logits", list(logits.shape), "FP32")
    inp.set_data_from_numpy(logits)
    res = client.infer("mia_defense_levelset", [inp])
    client.close()
    defended, raw = res.as_numpy("probabilities"), softmax(logits)
    assert (defended[2:] == raw[2:]).all()
    assert (defended[:2].max(1) < raw[:2].max(1) - 0.01).all()
    assert (defended.argmax(1) == raw.argmax(1)).all()
    assert (defended == local.probabilities).all()  # the server runs exactly the core


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_untouched_rows_are_bit_identical_to_the_raw_ensemble(server, tiny_build, eval_texts, protocol):
    texts = eval_texts[0][:40] + NEUTRAL
    art = DefenseArtifact.load(tiny_build / "defense")
    with client_for(server, protocol) as c:
        raw, _ = c.classify(texts, model=RAW)
        defended, _ = c.classify(texts, model="veil_levelset")
    untouched = (defended == raw).all(1)
    # Logits up to a shift, recovered from the raw probabilities, give the risk the server saw.
    risk = Defense(art, config=DefenseConfig(variant="levelset"))(np.log(raw)).risk_before
    tau = art.thresholds(raw.argmax(1))
    assert (risk[untouched] <= tau[untouched] + 1e-4).all()  # nothing risky passes untouched
    assert (risk[~untouched] > tau[~untouched] - 1e-4).all()  # nothing safe is touched
    assert (defended[~untouched].max(1) < raw[~untouched].max(1)).all()  # never sharper


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_selective_step_serves_exactly_the_core(server, tiny_build, eval_texts, protocol):
    """``veil_defended`` end to end: the served bytes equal the core replayed in-process on the
    same logits and tokenizer signatures; training texts are gated (membership weight 1) and
    held-out texts are not, and each class is served from a small menu of calibrated values."""
    from veil.export.build_dir import BuildDir
    from veil.export.pipeline import onnx_logits
    from veil.python_backend import offline
    from veil.python_backend.tokens import text_signatures

    texts, _ = eval_texts
    build = BuildDir(tiny_build)
    opts = build.options()
    names = list(opts.input_names)
    logits = onnx_logits(build.onnx, build.hf, names, texts, max_length=opts.max_length)
    with client_for(server, protocol) as c:
        served, labels = c.classify(texts, model="veil_fixed_intensity")
    local = offline.defend(tiny_build, texts, logits, variant="fixed_intensity")
    assert (served == local).all()
    assert (labels == logits.argmax(1)).all()
    art = DefenseArtifact.load(build.defense)
    sig = text_signatures(build.hf, names, texts, max_length=opts.max_length)
    out = Defense(art, config=DefenseConfig(variant="fixed_intensity"))(logits, signatures=sig)
    assert (out.risk_before[:60] == 1.0).all()  # member_eval rows are training texts
    # Held-out rows: the synthetic sentences share a 30-word vocabulary, so some are near-duplicates
    # of a training sentence (gated too); most are not.
    assert (out.risk_before[60:] < 1.0).mean() > 0.5
    assert len({r.tobytes() for r in served}) <= 2 * art.selective.coarse_levels


def _served_and_replayed(server, tiny_build, texts: list[str], protocol: str):
    """``texts`` served by ``veil_fixed_intensity``, checked equal to the core replayed in-process,
    with what the replay used (artifact, its index and floor level, logits, fingerprints)."""
    from types import SimpleNamespace

    from veil.export.build_dir import BuildDir
    from veil.export.pipeline import onnx_logits
    from veil.python_backend import offline
    from veil.python_backend.tokens import text_fingerprints

    build = BuildDir(tiny_build)
    opts = build.options()
    art = DefenseArtifact.load(build.defense)
    names = list(opts.input_names)
    logits = onnx_logits(build.onnx, build.hf, names, texts, max_length=opts.max_length)
    with client_for(server, protocol) as c:
        served, _ = c.classify(texts, model="veil_fixed_intensity")
    assert (served == offline.defend(tiny_build, texts, logits, variant="fixed_intensity")).all()
    sig, seq = text_fingerprints(build.hf, names, texts, max_length=opts.max_length)
    return SimpleNamespace(
        build=build,
        names=names,
        art=art,
        index=art.member_index(),
        level=art.selective.level(None, adaptive=False),
        logits=logits,
        served=served,
        sig=sig,
        seq=seq,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_edits_of_training_texts_reach_the_near_copy_map(server, tiny_build, eval_texts, protocol):
    """The tokenizer's sequence hash travels to the step: a training text with two words swapped
    (the same token set, so the gate matches it fully) is served exactly as the core replays it
    with the sequence hashes; without part models it goes through the near-copy map, differently
    from serving it as a copy; the training texts themselves are copies."""
    from veil.export.edits import edits
    from veil.python_backend import selective
    from veil.python_backend.tokens import text_fingerprints

    training = eval_texts[0][:60]
    swapped = [edits(t, 2, "near-copy-test")[1] for t in training]
    texts = [t for t, s in zip(training, swapped, strict=True) if s != t]
    swapped = [s for t, s in zip(training, swapped, strict=True) if s != t]
    r = _served_and_replayed(server, tiny_build, swapped, protocol)
    art, index, level = r.art, r.index, r.level
    assert art.selective.has_near and art.selective.metrics["near"]["member_edits_near"] > 0
    near = selective.defend(r.logits, art.selective, index=index, signatures=r.sig, sequences=r.seq, threat=level)
    as_copies = selective.defend(r.logits, art.selective, index=index, signatures=r.sig, threat=level)
    assert near.near[near.member_weight > 0].all() and (near.member_weight == 1).mean() > 0.5
    assert (near.score_after != as_copies.score_after).any()
    _, own = text_fingerprints(r.build.hf, r.names, texts, max_length=r.build.options().max_length)
    assert index.exact(own).all() and not index.exact(r.seq).any()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_whole_matches_of_training_texts_are_answered_by_their_part_model(server, tiny_build, eval_texts, protocol):
    """The build trains the leave-out part models and writes them beside the artifact; a training
    text sent as it is, and a near copy of it (two words swapped), reach the step with their
    tokens and are answered by the part model that never trained on the text (the core replayed
    with the part models' ONNX files), not by the maps; the label is the served model's."""
    from veil.export.edits import edits
    from veil.python_backend import selective
    from veil.python_backend.offline import held_out_on_texts

    training = eval_texts[0][:40]  # member_eval: training texts
    swapped = [s for t in training if (s := edits(t, 2, "near-copy-test")[1]) != t]
    texts = training + swapped
    r = _served_and_replayed(server, tiny_build, texts, protocol)
    art, index, level = r.art, r.index, r.level
    assert len(art.part_models) == 2 and art.selective.has_leave_out and index.has_parts
    assert art.selective.metrics["leave_out"]["parts"] == 2
    kw = dict(signatures=r.sig, sequences=r.seq, threat=level)
    out = selective.defend(r.logits, art.selective, index=index, held_out=held_out_on_texts(r.build, texts), **kw)
    mapped = selective.defend(r.logits, art.selective, index=index, **kw)
    whole = out.member_weight > 0
    assert whole[: len(training)].all() and whole.mean() > 0.9
    assert (out.left_out == whole).all() and not mapped.left_out.any()
    assert (out.score_after != mapped.score_after)[whole].mean() > 0.5
    np.testing.assert_array_equal(r.served, out.probabilities)
    assert (r.served.argmax(1) == r.logits.argmax(1)).all()


def test_a_texts_bytes_do_not_depend_on_its_request_neighbours(server, eval_texts):
    """One text's served bytes are the same sent alone, inside a multi-row request beside a longer
    text (its tokens padded to the longer one's bucket, and its part model's pass run in a group of
    other rows), and among concurrent one-row requests the server may merge into one batch: a caller
    who varies a text's neighbours has nothing to average (docs/defense.md, "Equal work")."""
    from concurrent.futures import ThreadPoolExecutor

    texts, _ = eval_texts
    chosen = texts[:12] + texts[60:72]  # training texts (answered by their part models) and non-members
    long_text = " ".join(texts[72:80])  # pads every other row of its request to the longest bucket
    model = "veil_fixed_intensity"  # no adaptive state: only the neighbours change between the sends
    with client_for(server, "grpc") as c:
        alone = np.concatenate([c.classify([t], model=model)[0] for t in chosen])
        beside = c.classify([long_text, *chosen[::-1]], model=model, batch_size=64)[0][1:][::-1]
        raw_alone = np.concatenate([c.classify([t], model=RAW)[0] for t in chosen])
        raw_beside = c.classify([long_text, *chosen], model=RAW)[0][1:]

    def one(t: str) -> np.ndarray:
        with client_for(server, "grpc") as c:
            return c.classify([t], model=model)[0]

    with ThreadPoolExecutor(8) as pool:
        merged = np.concatenate(list(pool.map(one, chosen * 2)))
    np.testing.assert_array_equal(alone.view(np.uint32), beside.view(np.uint32))
    np.testing.assert_array_equal(np.tile(alone, (2, 1)).view(np.uint32), merged.view(np.uint32))
    np.testing.assert_array_equal(raw_alone.view(np.uint32), raw_beside.view(np.uint32))


def test_ungated_replay_is_what_the_step_serves_for_bare_logits(server, tiny_build, eval_texts):
    """The evaluation defends the attacker's own model outputs with ``gated=False``: those are the
    bytes the served step returns for logits sent without a fingerprint, and on training texts they
    differ from the gated answer (an attacker never reaches the member index through its own logits)."""
    from veil.export.build_dir import BuildDir
    from veil.export.pipeline import onnx_logits
    from veil.privacy.query import defend_logits
    from veil.python_backend import offline

    texts, _ = eval_texts
    opts = BuildDir(tiny_build).options()
    logits = onnx_logits(
        BuildDir(tiny_build).onnx, BuildDir(tiny_build).hf, list(opts.input_names), texts, max_length=opts.max_length
    )
    ungated = offline.defend(tiny_build, texts, logits, variant="fixed_intensity", gated=False)
    bare = defend_logits(server.http_url, "fixed_intensity", logits, client_id=fresh_id("bare"))
    assert (ungated == bare).all()
    gated = offline.defend(tiny_build, texts, logits, variant="fixed_intensity")
    moved = (gated != ungated).any(axis=1)
    assert moved[:60].sum() > moved[60:].sum()  # the gate moves training texts, and only with their texts


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_variant_keeps_the_label(server, eval_texts, protocol):
    texts = eval_texts[0][:30]
    with client_for(server, protocol) as c:
        _, raw_l = c.classify(texts, model=RAW)
        for variant in TINY_VARIANTS:
            model = DEFENDED if variant == "veil" else f"veil_{variant}"
            p, labels = c.classify(texts, model=model)
            assert (labels == raw_l).all(), variant
            assert np.isfinite(p).all()


def _bad_requests(protocol: str):
    mod = httpclient if protocol == "http" else grpcclient

    def text_input(array, dtype="BYTES"):
        inp = mod.InferInput("text", list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        return [inp]

    return {
        "empty batch": (text_input(np.zeros((0, 1), dtype=object)), ""),
        "wrong dtype": (text_input(np.ones((1, 1), np.int32), "INT32"), "data-type"),
        "non-UTF-8": (text_input(np.array([[b"\xff\xfebad"]], dtype=object)), "not valid UTF-8"),
        "empty text": (text_input(np.array([[b""]], dtype=object)), "empty or whitespace"),
        "wrong shape": (text_input(np.array([[b"a", b"b"]], dtype=object)), "shape"),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_input_gets_a_clear_error_and_serving_goes_on(server, protocol):
    probe = ["a good film", "an awful plot"]
    with client_for(server, protocol) as c:
        before = c.classify(probe, model="veil_fixed_intensity")
        for case, (inputs, message) in _bad_requests(protocol).items():
            with pytest.raises(InferenceServerException) as err:
                c.client.infer(DEFENDED, inputs)
            assert is_invalid_argument(err.value, protocol), (case, status_of(err.value), err.value.message())
            assert message.lower() in err.value.message().lower(), (case, err.value.message())
            after = c.classify(probe, model="veil_fixed_intensity")
            assert (after[0] == before[0]).all() and (after[1] == before[1]).all(), case


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_very_long_text_is_truncated_not_fatal(server, protocol):
    long_text = ("a good film with a warm cast " * 4000)[:100_000]
    with client_for(server, protocol) as c:
        p, _labels = c.classify([long_text, "short"], model=DEFENDED)
    assert p.shape == (2, 2) and np.isfinite(p).all()


def test_http_and_grpc_agree(server, eval_texts):
    texts = eval_texts[0][:20]
    with client_for(server, "http") as h, client_for(server, "grpc") as g:
        for model in (RAW, "veil_fixed_intensity"):
            assert (h.classify(texts, model=model)[0] == g.classify(texts, model=model)[0]).all()


def _metric(server, name: str, model: str = "mia_defense") -> float:
    time.sleep(2 * METRICS_FLUSH_S)  # the defense step batches its metric updates
    for line in requests.get(server.metrics_url, timeout=5).text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} for {model} not exported")


def test_client_id_from_parameter_and_forwarded_header(server):
    before = _metric(server, "veil_tracked_clients")
    inputs = lambda mod: [mod.InferInput("text", [1, 1], "BYTES")]  # noqa: E731
    h = httpclient.InferenceServerClient(server.http_url)
    inp = inputs(httpclient)
    inp[0].set_data_from_numpy(np.array([[b"fine film"]], dtype=object))
    h.infer(DEFENDED, inp, headers={"veil-client-id": fresh_id("header-http")})
    h.infer(DEFENDED, inp, parameters={"veil-client-id": fresh_id("param-http")})
    h.close()
    g = grpcclient.InferenceServerClient(server.grpc_url)
    inp = inputs(grpcclient)
    inp[0].set_data_from_numpy(np.array([[b"fine film"]], dtype=object))
    g.infer(DEFENDED, inp, headers={"veil-client-id": fresh_id("header-grpc")})
    g.close()
    assert _metric(server, "veil_tracked_clients") == before + 3


def test_telemetry_is_exported(server, eval_texts):
    with client_for(server, "http") as c:
        c.classify(eval_texts[0][:10], model=DEFENDED)
        c.classify(eval_texts[0][:10], model="veil_levelset")
    assert _metric(server, "veil_outputs_total") >= 10
    assert _metric(server, "veil_outputs_perturbed_total") >= 1
    assert _metric(server, "veil_pgd_steps_total", model="mia_defense_levelset") >= 1
    assert 0.0 <= _metric(server, "veil_risk_after_mean") <= _metric(server, "veil_risk_before_mean") <= 1.0
