"""A test-only repository whose models misbehave on purpose, served as in production.

The classifier and the defense step are the real adapters, subclassed in the repository's own
``model.py`` (production code has no test hooks): the classifier (the model, and the session the
defense step hosts) returns NaN, Inf or a sentinel row of logits for texts containing a trigger
word, and the defense raises when it meets the sentinel, as a bug or a bad device would make it
raise at run time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import tiny_repository

TRIGGERS = {"nan": "zebra", "inf": "penguin", "raise": "volcano"}
SENTINEL = 777.0

POISONED = """
class Poisoned:
    \"\"\"The real session, with the logits of trigger-word rows replaced.\"\"\"

    def __init__(self, model):
        self.model = model
        self.input_names = model.input_names
        self.output_name = model.output_name

    def outputs(self, feed):
        out = self.model.outputs(feed)
        logits = np.array(out[self.output_name], dtype=np.float32, copy=True)
        for token, row in REPLACE.items():
            logits[(feed["input_ids"] == token).any(1)] = row
        return {**out, self.output_name: logits}
"""

CLASSIFIER_PY = '''"""Test-only: the real classifier, with the logits of trigger-word rows replaced."""

import json

import numpy as np

from veil.python_backend.triton.classifier import TritonPythonModel as RealClassifier

REPLACE = {{int(token): row for token, row in json.loads({payload!r}).items()}}
{poisoned}

class TritonPythonModel(RealClassifier):
    def initialize(self, args):
        super().initialize(args)
        self.model = Poisoned(self.model)
'''

DEFENSE_PY = '''"""Test-only: the real defense step, whose defense raises on the sentinel logits (and whose
hosted classifier, in the hosted layout, is poisoned like the classifier model)."""

import json

import numpy as np

from veil.python_backend.triton.mia_defense import TritonPythonModel as RealDefense

REPLACE = {{int(token): row for token, row in json.loads({payload!r}).items()}}
{poisoned}

class Faulty:
    def __init__(self, defense):
        self.defense = defense

    def __getattr__(self, name):
        return getattr(self.defense, name)

    def __call__(self, z, **kwargs):
        if (np.asarray(z) == {sentinel!r}).any():
            raise RuntimeError("injected fault")
        return self.defense(z, **kwargs)


class TritonPythonModel(RealDefense):
    def initialize(self, args):
        super().initialize(args)
        self.defense = Faulty(self.defense)
        if self.classifier is not None:
            self.classifier = Poisoned(self.classifier)
'''


def trigger_tokens(tiny_build: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_build / "hf"), local_files_only=True)
    ids = {kind: tok.convert_tokens_to_ids(word) for kind, word in TRIGGERS.items()}
    assert tok.unk_token_id not in ids.values(), ids
    return ids


@pytest.fixture(scope="session")
def fault_stack(tiny_build, tmp_path_factory):
    """The faulty repository behind the production gateway (``.triton`` is reachable directly
    with ``internal_headers()``)."""
    from veil.serving.production import ProductionServer

    root = tmp_path_factory.mktemp("faulty")
    repo = tiny_repository(
        tiny_build, root / "model_repository", mode="production", variants=("veil", "fixed_intensity")
    )
    ids = trigger_tokens(tiny_build)
    nan, inf = float("nan"), float("inf")
    replace = {ids["nan"]: [nan, nan], ids["inf"]: [inf, -inf], ids["raise"]: [SENTINEL, -SENTINEL]}
    payload = json.dumps(replace)  # json writes NaN / Infinity and reads them back
    classifier = repo / "embedded" / "classifier" / "1" / "model.py"
    if classifier.exists():  # the ensemble layout's classifier (hosted: the defense steps run it)
        classifier.write_text(CLASSIFIER_PY.format(payload=payload, poisoned=POISONED))
    for folder in (repo / "embedded").glob("mia_defense*"):
        (folder / "1" / "model.py").write_text(DEFENSE_PY.format(payload=payload, poisoned=POISONED, sentinel=SENTINEL))
    with ProductionServer(repo, log_file=root / "tritonserver.log") as stack:
        yield stack
