from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from veil.python_backend.adaptive import AdaptiveConfig
from veil.python_backend.artifact import ArtifactError
from veil.python_backend.defense import Defense
from veil.python_backend.fingerprint import SIGNATURE_SIZE

from ..conftest import make_artifact
from .conftest import FakeFamily, FakeRequest, load_adapter, model_args


@pytest.fixture
def model(pb_utils, tmp_path):
    make_artifact(2).save(tmp_path / "1" / "defense")
    m = load_adapter("mia_defense").TritonPythonModel()
    m.initialize(
        model_args(
            tmp_path,
            name="mia_defense",
            parameters={"variant": "veil", "classifier_sha256": "0" * 64, "metrics_flush_s": "0"},
        )
    )
    return m


def test_batch_of_requests_with_per_request_errors(model):
    good = np.array([[6.0, -1.0], [0.1, 0.0]], np.float32)
    responses = model.execute(
        [
            FakeRequest({"logits": good}, {"veil-client-id": "alice"}),
            FakeRequest({"logits": np.array([[np.nan, 1.0]], np.float32)}),
            FakeRequest({"logits": np.zeros((1, 3), np.float32)}),
            FakeRequest({"logits": good}, {"veil-client-id": 7}),
            FakeRequest({}),
            FakeRequest({"logits": good[::-1].copy()}),
        ]
    )
    assert len(responses) == 6
    ok = responses[0]
    assert ok.error is None
    young = AdaptiveConfig().young_threat  # alice is new: her first rows get the young floor
    expected = Defense(make_artifact(2))(good, threat=np.full(2, young))
    np.testing.assert_allclose(ok.tensors["probabilities"], expected.probabilities, atol=1e-6)
    assert ok.tensors["label"].tolist() == [[0], [0]]
    messages = [r.error.message() for r in responses[1:5]]
    assert "non-finite logits" in messages[0]
    assert "expected 2 logits per row, got 3" in messages[1]
    assert "client id must be a string" in messages[2]
    assert "missing input 'logits'" in messages[3]
    assert all(r.error.code == "INVALID_ARG" for r in responses[1:5])
    assert responses[5].error is None and responses[5].tensors["probabilities"].shape == (2, 2)
    assert FakeFamily.registry["veil_outputs_total"].value == 4
    assert FakeFamily.registry["veil_request_errors_total"].value == 4
    assert FakeFamily.registry["veil_tracked_clients"].value == 1  # alice (anonymous rows share one state)


def test_defense_failure_fails_closed(model, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(
        model,
        "defense",
        type(
            "D",
            (),
            {
                "__call__": boom,
                "check": lambda self, z: None,
                "look_up": lambda self, **k: None,
                "adaptive": True,
                "num_classes": 2,
            },
        )(),
    )
    responses = model.execute([FakeRequest({"logits": np.array([[5.0, 0.0]], np.float32)})])
    assert responses[0].error.code == "INTERNAL"
    assert "no output returned: simulated failure" in responses[0].error.message()
    assert responses[0].tensors == {}


def test_foreign_artifact_refuses_to_initialize(pb_utils, tmp_path):
    make_artifact(2).save(tmp_path / "1" / "defense")
    m = load_adapter("mia_defense").TritonPythonModel()
    with pytest.raises(ArtifactError, match="recalibrate"):
        m.initialize(
            model_args(tmp_path, name="mia_defense", parameters={"variant": "veil", "classifier_sha256": "a" * 64})
        )


def test_missing_artifact_refuses_to_initialize(pb_utils, tmp_path):
    m = load_adapter("mia_defense").TritonPythonModel()
    with pytest.raises(ArtifactError, match="missing"):
        m.initialize(
            model_args(tmp_path, name="mia_defense", parameters={"variant": "veil", "classifier_sha256": "0" * 64})
        )


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from veil.export.onnx_export import export_onnx
    from veil.export.train import load_model

    model, tokenizer = load_model("tiny-bert", num_labels=2)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, tokenizer, path)
    return path


def hosted_model(tmp_path, onnx_path, *, variant: str = "fixed_intensity", artifact=None, tokenizer=None, parts=0):
    """The step hosting the classifier ``onnx_path``; with ``tokenizer`` (a tokenizer to save in its
    folder) it fingerprints the tokens itself, as a repository written now has it do; with
    ``parts`` it has that many leave-out part models (copies of the classifier), training text
    ``i`` left out of part ``i % parts``."""
    import dataclasses
    import shutil

    from veil.python_backend.artifact import part_model_file, sha256_file

    sha = sha256_file(onnx_path)
    art = dataclasses.replace(artifact or make_artifact(2), classifier_sha256=sha)
    if parts:
        for k in range(parts):
            part_model_file(tmp_path / "1" / "defense", k).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(onnx_path, part_model_file(tmp_path / "1" / "defense", k))
        art.selective.leave_out_q = [[] for _ in range(art.num_classes)]  # the part models' own scale
        art = dataclasses.replace(art, part_models=[sha] * parts, index_parts=np.arange(len(art.index_labels)) % parts)
    art.save(tmp_path / "1" / "defense")
    shutil.copy(onnx_path, tmp_path / "1" / "model.onnx")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp_path / "1" / "tokenizer")
    m = load_adapter("mia_defense").TritonPythonModel()
    params = {"variant": variant, "classifier_sha256": sha, "metrics_flush_s": "0", "hosts_classifier": "1"}
    m.initialize(model_args(tmp_path, name="mia_defense", parameters=params))
    return m


def test_hosted_classifier_serves_what_logits_sent_directly_get(pb_utils, tmp_path, tiny_onnx):
    """The hosted layout: token tensors in, the step's own onnxruntime session computes the logits;
    the answer equals sending those logits (and the same fingerprint) to the step. Requests of two
    sequence lengths in one batch, a malformed one and one with neither input fail alone."""
    from veil.python_backend.onnx_classifier import OnnxClassifier

    m = hosted_model(tmp_path, tiny_onnx)
    rng = np.random.default_rng(1)

    def tokens(batch: int, seq: int) -> dict[str, np.ndarray]:
        return {
            "input_ids": rng.integers(1, 200, (batch, seq)),
            "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64),
            "fingerprint": rng.integers(0, 2**31 - 1, (batch, SIGNATURE_SIZE)).astype(np.int32),
        }

    feeds = [tokens(2, 8), tokens(1, 16), tokens(3, 8)]
    bad = {**tokens(1, 8), "attention_mask": np.ones((1, 9), np.int64)}
    responses = m.execute([FakeRequest(f) for f in (feeds[0], bad, feeds[1], {}, feeds[2])])
    assert [r.error is None for r in responses] == [True, False, True, False, True]
    assert "share one [batch, sequence] shape" in responses[1].error.message()
    assert "missing input(s)" in responses[3].error.message()
    assert responses[1].error.code == responses[3].error.code == "INVALID_ARG"
    session = OnnxClassifier(tiny_onnx)
    direct = m.execute([FakeRequest({"logits": session(f), "fingerprint": f["fingerprint"]}) for f in feeds])
    for hosted, sent in zip([responses[0], responses[2], responses[4]], direct, strict=True):
        np.testing.assert_array_equal(hosted.tensors["probabilities"], sent.tensors["probabilities"])
        np.testing.assert_array_equal(hosted.tensors["label"], sent.tensors["label"])


def test_hosted_classifier_failure_fails_closed(pb_utils, tmp_path, tiny_onnx, monkeypatch):
    m = hosted_model(tmp_path, tiny_onnx)

    def boom(feed):
        raise RuntimeError("session lost")

    monkeypatch.setattr(m.classifier, "outputs", boom)
    feed = {n: np.ones((1, 8), np.int64) for n in m.classifier.input_names}
    (response,) = m.execute([FakeRequest(feed)])
    assert response.error.code == "INTERNAL" and response.tensors == {}
    assert "classifier failed; no output returned: session lost" in response.error.message()
    assert FakeFamily.registry["veil_request_errors_total"].value == 1


def test_hosted_classifier_must_be_the_artifacts(pb_utils, tmp_path, tiny_onnx):
    import shutil

    make_artifact(2).save(tmp_path / "1" / "defense")  # calibrated for classifier "00...0"
    shutil.copy(tiny_onnx, tmp_path / "1" / "model.onnx")
    m = load_adapter("mia_defense").TritonPythonModel()
    params = {"variant": "veil", "classifier_sha256": "0" * 64, "hosts_classifier": "1"}
    with pytest.raises(RuntimeError, match="does not match the classifier"):
        m.initialize(model_args(tmp_path, name="mia_defense", parameters=params))


def test_adaptive_state_sees_signatures_without_the_artifacts_common_values(pb_utils, tmp_path):
    """The artifact's ``tracker_common`` values are left out of what the threat state sees (and
    only there): the MinHash part and every other sketch value arrive as sent."""
    from veil.python_backend.fingerprint import EMPTY, MINHASH_SIZE
    from veil.python_backend.threat_state import Observed

    common = [11, 12, 13]
    art = replace(make_artifact(2), tracker_common=common)  # the cached artifact stays as it is
    art.save(tmp_path / "1" / "defense")
    m = load_adapter("mia_defense").TritonPythonModel()
    params = {"variant": "veil", "classifier_sha256": "0" * 64, "metrics_flush_s": "0"}
    m.initialize(model_args(tmp_path, name="mia_defense", parameters=params))
    seen = []

    class Recording:
        def observe(self, batch, *, now=None, row_cost_s=0.0):
            seen.extend(sig for _, sig in batch)
            return Observed([0.0] * len(batch))

        def __getattr__(self, name):
            return getattr(m_state, name)

    m_state, m.state = m.state, Recording()
    sig = np.full((2, SIGNATURE_SIZE), EMPTY, np.int32)
    sig[:, :MINHASH_SIZE] = 12  # a MinHash value equal to a common one stays
    sig[0, MINHASH_SIZE : MINHASH_SIZE + 4] = [5, 11, 13, 40]
    sig[1, MINHASH_SIZE : MINHASH_SIZE + 2] = [12, 99]
    logits = np.array([[2.0, -1.0], [0.0, 1.0]], np.float32)
    (r,) = m.execute([FakeRequest({"logits": logits, "fingerprint": sig})])
    assert r.error is None
    (got,) = seen
    np.testing.assert_array_equal(got[:, :MINHASH_SIZE], sig[:, :MINHASH_SIZE])
    assert sorted(v for v in got[0, MINHASH_SIZE:] if v != EMPTY) == [5, 40]
    assert sorted(v for v in got[1, MINHASH_SIZE:] if v != EMPTY) == [99]
    # the member gate still gets the signature as sent: same output as the step without a mask
    expected = Defense(make_artifact(2))(logits, threat=np.zeros(2), signatures=sig)
    np.testing.assert_array_equal(r.tensors["probabilities"], expected.probabilities)


def test_the_state_gets_the_steps_measured_seconds_per_row(pb_utils, tmp_path, monkeypatch):
    """The busy share's unit: each batch's execute time per served row, averaged, reaches the
    state with the next batch (0 before the first: no busy threat from nothing measured)."""
    from veil.python_backend.threat_state import Observed

    make_artifact(2).save(tmp_path / "1" / "defense")
    module = load_adapter("mia_defense")
    m = module.TritonPythonModel()
    params = {"variant": "veil", "classifier_sha256": "0" * 64, "metrics_flush_s": "0"}
    m.initialize(model_args(tmp_path, name="mia_defense", parameters=params))
    costs = []

    class Recording:
        def observe(self, batch, *, now=None, row_cost_s=0.0):
            costs.append(row_cost_s)
            return Observed([0.0] * len(batch))

        def __getattr__(self, name):
            return getattr(m_state, name)

    m_state, m.state = m.state, Recording()
    clock = iter([10.0, 10.8, 20.0, 20.2])  # two batches: 0.8 s for 4 rows, then 0.2 s for 4 rows
    monkeypatch.setattr(module.time, "perf_counter", lambda: next(clock))
    sig = np.random.default_rng(0).integers(0, 1000, (4, SIGNATURE_SIZE)).astype(np.int32)
    logits = np.array([[2.0, -1.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.5]], np.float32)
    for _ in range(2):
        (r,) = m.execute([FakeRequest({"logits": logits, "fingerprint": sig}, {"veil-client-id": "alice"})])
        assert r.error is None
    assert costs[0] == 0.0
    assert costs[1] == pytest.approx(0.2)
    assert m.cost.rows == 8 and 0.05 < m.cost.per_row < 0.2  # the second batch pulled the average down


def test_sequence_hashes_reach_the_gate_and_a_misshapen_one_is_refused(pb_utils, tmp_path):
    """The tokenizer's ``sequence`` tensor decides copy or near copy: a training text's signature
    with its own sequence hash is served by the copies' map, with another hash by the near-copy
    map (what the step computes in-process either way); a request without one is served as a copy;
    a misshapen one is the caller's error, alone."""
    from veil.python_backend import selective
    from veil.python_backend.fingerprint import NO_SEQUENCE

    from ..conftest import synthetic_logits

    base = make_artifact(2)
    rng = np.random.default_rng(3)
    seqs = rng.integers(0, 2**62, len(base.index_labels))
    edits = synthetic_logits(300, 2, sharp=2.0, seed=5)
    near_m, near_n = selective.quantile_tables(edits, edits.argmax(1), edits * 0.3, edits.argmax(1))
    tables = replace(base.selective, near_member_q=near_m, near_nonmember_q=near_n, intensity_floor=0.0)
    art = replace(base, selective=tables, index_sequences=seqs)
    art.save(tmp_path / "1" / "defense")
    m = load_adapter("mia_defense").TritonPythonModel()
    params = {"variant": "fixed_intensity", "classifier_sha256": "0" * 64, "metrics_flush_s": "0"}
    m.initialize(model_args(tmp_path, name="mia_defense", parameters=params))
    logits = synthetic_logits(40, 2, sharp=6.0, seed=2)
    sig = art.index_signatures[:40]
    copy, other = seqs[:40, None], seqs[:40, None] + 1
    responses = m.execute(
        [
            FakeRequest({"logits": logits, "fingerprint": sig, "sequence": copy}),
            FakeRequest({"logits": logits, "fingerprint": sig, "sequence": other}),
            FakeRequest({"logits": logits, "fingerprint": sig}),
            FakeRequest({"logits": logits, "fingerprint": sig, "sequence": copy[:, 0]}),
        ]
    )
    local = Defense(art, config=replace(m.defense.config))
    for r, s in zip(responses[:3], (copy[:, 0], other[:, 0], np.full(40, NO_SEQUENCE)), strict=True):
        assert r.error is None
        expected = local(logits, threat=np.zeros(40), signatures=sig, sequences=s).probabilities
        assert r.tensors["probabilities"].tobytes() == expected.tobytes()
    assert responses[0].tensors["probabilities"].tobytes() == responses[2].tensors["probabilities"].tobytes()
    assert responses[0].tensors["probabilities"].tobytes() != responses[1].tensors["probabilities"].tobytes()
    assert (
        responses[3].error.code == "INVALID_ARG" and "sequence must have shape [40, 1]" in responses[3].error.message()
    )


def _hosted_tokens(rng, batch: int, seq: int) -> dict[str, np.ndarray]:
    return {
        "input_ids": rng.integers(1, 200, (batch, seq)),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
        "fingerprint": rng.integers(0, 2**31 - 1, (batch, SIGNATURE_SIZE)).astype(np.int32),
    }


def test_the_look_up_runs_while_the_classifier_does(pb_utils, tmp_path, tiny_onnx):
    """Latency: the member index's look-up needs no logits, so the hosted step runs it on its
    worker thread during the forward pass (onnxruntime releases the GIL) instead of after it. The
    forward pass here waits until the look-up has started: run one after the other, it would not."""
    import threading

    m = hosted_model(tmp_path, tiny_onnx, variant="veil")
    started, overlapped = threading.Event(), []
    look_up, forward = m.defense.look_up, m.classifier.outputs

    def recording_look_up(**kw):
        started.set()
        return look_up(**kw)

    def waiting_forward(feed):
        overlapped.append(started.wait(timeout=10))
        return forward(feed)

    m.defense.look_up, m.classifier.outputs = recording_look_up, waiting_forward
    rng = np.random.default_rng(2)
    (r,) = m.execute([FakeRequest(_hosted_tokens(rng, 2, 8), {"veil-client-id": "alice"})])
    assert r.error is None and overlapped == [True]


def test_a_request_that_fails_after_the_look_up_leaves_the_others_bytes_alone(pb_utils, tmp_path, tiny_onnx):
    """The look-up covers every request of the batch before the classifier runs; when one request's
    forward pass fails (its length group), the others are served from their own rows of it, the
    bytes the step serves for their logits sent directly, and the failed one is an error, alone."""
    m = hosted_model(tmp_path, tiny_onnx)
    name = m.classifier.output_name

    def sharp(feed):  # a member's confidence, which the gate's map moves for training texts
        if feed["input_ids"].shape[1] == 16:
            raise RuntimeError("out of memory")
        return {name: np.tile(np.float32([-3.0, 5.0]), (len(feed["input_ids"]), 1))}

    m.classifier.outputs = sharp
    rng = np.random.default_rng(4)
    feeds = [_hosted_tokens(rng, 2, 8), _hosted_tokens(rng, 1, 16), _hosted_tokens(rng, 3, 8)]
    members = m.defense.artifact.index_signatures  # training texts' rows: the gate moves them
    feeds[0]["fingerprint"][0], feeds[2]["fingerprint"][1:] = members[0], members[1:3]
    responses = m.execute([FakeRequest(f) for f in feeds])
    assert responses[1].error.code == "INTERNAL" and "out of memory" in responses[1].error.message()
    direct = m.execute([FakeRequest({"logits": sharp(f)[name], "fingerprint": f["fingerprint"]}) for f in feeds[::2]])
    for hosted, sent in zip(responses[::2], direct, strict=True):
        assert hosted.error is None
        assert hosted.tensors["probabilities"].tobytes() == sent.tensors["probabilities"].tobytes()
    ungated = m.execute([FakeRequest({"logits": sharp(feeds[2])[name]})])[0].tensors["probabilities"]
    assert (ungated[1:] != responses[2].tensors["probabilities"][1:]).all()  # the members' rows were moved


def test_the_hosted_step_fingerprints_the_tokens_it_classifies(pb_utils, tmp_path, tiny_onnx):
    """With its tokenizer folder the hosted step computes each row's fingerprint and sequence hash
    from the tokens it classifies (on the worker, while the classifier runs), so the tokenizer step
    computes none: a training text's tokens are gated without a fingerprint sent, and a fingerprint
    sent beside the tokens (another training text's, to dodge or to frame) is not what is read."""
    from veil.export.train import load_model
    from veil.python_backend.tokens import Fingerprinter

    _, tokenizer = load_model("tiny-bert", num_labels=2)
    rng = np.random.default_rng(6)
    members = _hosted_tokens(rng, 3, 8)
    tokenizer.save_pretrained(tmp_path / "tok")
    fp = Fingerprinter.from_dir(tmp_path / "tok")(members["input_ids"], members["attention_mask"])
    base = make_artifact(2)
    # Training texts 0-2 are these tokens, labelled as the logits below say: the map moves them.
    art = replace(
        base,
        index_signatures=np.r_[fp["fingerprint"], base.index_signatures[3:]],
        index_labels=np.r_[[1, 1, 1], base.index_labels[3:]],
    )
    m = hosted_model(tmp_path, tiny_onnx, artifact=art, tokenizer=tokenizer)
    name = m.classifier.output_name
    m.classifier.outputs = lambda feed: {name: np.tile(np.float32([-3.0, 5.0]), (len(feed["input_ids"]), 1))}
    z = np.tile(np.float32([-3.0, 5.0]), (3, 1))
    strangers = _hosted_tokens(rng, 3, 8)
    sent_nothing = {k: v for k, v in members.items() if k != "fingerprint"}
    framed = {**strangers, "fingerprint": fp["fingerprint"]}  # another text's fingerprint beside the tokens
    got = m.execute([FakeRequest(sent_nothing), FakeRequest(members), FakeRequest(framed)])
    direct = m.execute(
        [
            FakeRequest({"logits": z, "fingerprint": fp["fingerprint"], "sequence": fp["sequence"]}),
            FakeRequest({"logits": z}),
        ]
    )
    member_bytes, ungated_bytes = (r.tensors["probabilities"].tobytes() for r in direct)
    assert member_bytes != ungated_bytes
    assert got[0].tensors["probabilities"].tobytes() == got[1].tensors["probabilities"].tobytes() == member_bytes
    assert got[2].tensors["probabilities"].tobytes() == ungated_bytes


def _counting_parts(m) -> list[list[int]]:
    """Rows each call of each part model ran (recorded per part)."""
    calls: list[list[int]] = [[] for _ in m.parts]
    for k, part in enumerate(m.parts):

        def counted(feed, k=k, run=part.outputs):
            calls[k].append(len(feed["input_ids"]))
            return run(feed)

        part.outputs = counted
    return calls


def test_every_row_runs_through_one_part_model_member_or_not(pb_utils, tmp_path, tiny_onnx):
    """Equal work with leave-out part models: run only on whole matches of training texts, the
    extra forward pass made training texts slower to answer (latency AUC 0.990 as a membership
    score). Every row sent as tokens now goes through exactly one part model, a training text's
    through the one that never trained on it (which answers it), a stranger's through the one its
    position picks, discarded; rows sent as logits through none."""
    m = hosted_model(tmp_path, tiny_onnx, parts=2)
    calls = _counting_parts(m)
    rng = np.random.default_rng(8)
    members, strangers = _hosted_tokens(rng, 4, 8), _hosted_tokens(rng, 4, 8)
    members["fingerprint"] = m.defense.artifact.index_signatures[:4].copy()  # training texts 0-3
    name = m.classifier.output_name
    sharp = np.tile(np.float32([-3.0, 5.0]), (4, 1))
    m.classifier.outputs = lambda feed: {name: sharp[: len(feed["input_ids"])]}
    work = []
    for feed in (members, strangers):
        (r,) = m.execute([FakeRequest(feed)])
        assert r.error is None
        work.append(sorted(n for c in calls for n in c))
        for c in calls:
            c.clear()
    assert work[0] == work[1] == [2, 2]  # 4 rows each, split 2 / 2 over the two parts
    (r,) = m.execute([FakeRequest({"logits": sharp})])
    assert r.error is None and not any(calls)
    # A variant without the member gate reads no part model: none runs, and it serves.
    other = hosted_model(tmp_path / "label-only", tiny_onnx, parts=2, variant="label_only")
    other_calls = _counting_parts(other)
    answers = other.execute([FakeRequest(members), FakeRequest(strangers)])
    assert all(a.error is None for a in answers) and not any(other_calls)
    # The members' rows were answered by their part models (moved off the maps' answer): the same
    # logits sent without tokens get the maps.
    (served,) = m.execute([FakeRequest(members)])
    (mapped,) = m.execute([FakeRequest({"logits": sharp, "fingerprint": members["fingerprint"]})])
    assert served.tensors["probabilities"].tobytes() != mapped.tensors["probabilities"].tobytes()


def test_the_part_models_run_while_the_classifier_does(pb_utils, tmp_path, tiny_onnx):
    """The part models' pass runs on the worker beside the classifier's forward pass (both in
    onnxruntime, which releases the GIL): the forward pass here waits until a part model has
    started, which run one after the other it never would."""
    import threading

    m = hosted_model(tmp_path, tiny_onnx, parts=2)
    started, overlapped = threading.Event(), []
    for part in m.parts:

        def signalling(feed, run=part.outputs):
            started.set()
            return run(feed)

        part.outputs = signalling
    forward = m.classifier.outputs

    def waiting_forward(feed):
        overlapped.append(started.wait(timeout=10))
        return forward(feed)

    m.classifier.outputs = waiting_forward
    (r,) = m.execute([FakeRequest(_hosted_tokens(np.random.default_rng(9), 2, 8))])
    assert r.error is None and overlapped == [True]


def test_a_failed_part_pass_fails_its_request_closed(pb_utils, tmp_path, tiny_onnx):
    """A request whose part-model pass fails gets an error, never an answer without it; the other
    requests of the batch are served as alone."""
    m = hosted_model(tmp_path, tiny_onnx, parts=2)
    for part in m.parts:

        def failing(feed, run=part.outputs):
            if feed["input_ids"].shape[1] == 16:
                raise RuntimeError("part model out of memory")
            return run(feed)

        part.outputs = failing
    rng = np.random.default_rng(10)
    feeds = [_hosted_tokens(rng, 2, 8), _hosted_tokens(rng, 1, 16), _hosted_tokens(rng, 3, 8)]
    responses = m.execute([FakeRequest(f) for f in feeds])
    assert responses[1].error.code == "INTERNAL" and "part model" in responses[1].error.message()
    alone = [m.execute([FakeRequest(f)])[0] for f in feeds[::2]]
    for together, single in zip(responses[::2], alone, strict=True):
        assert together.error is None
        assert together.tensors["probabilities"].tobytes() == single.tensors["probabilities"].tobytes()
