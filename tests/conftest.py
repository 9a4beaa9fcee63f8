"""Shared fixtures: synthetic text data, a tiny trained+exported+calibrated build, a real server.

The tiny build is a random-initialised 2-layer BERT with MiniLM's tokenizer, fine-tuned to
overfit a few hundred synthetic sentences, so the suite runs in minutes on 2 CPU cores without
touching the Hugging Face hub or ../shared/data.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from veil.python_backend.defense import VARIANTS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "fine", "lovely", "superb", "brilliant", "charming", "warm", "funny", "moving"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "poor", "tedious", "flat", "grim", "messy"]
FILLER = "the film movie story cast plot scene it this was is very quite rather a an of and".split()  # noqa: SIM905


def synthetic_rows(
    n: int, *, seed: int = 0, classes: int = 2, noise: float = 0.0, names: bool = False
) -> list[tuple[str, int]]:
    """Distinct sentences whose label follows sentiment words; 20% carry contradicting words, and a
    ``noise`` share gets a random label (only memorisation fits those: a strong membership signal).

    ``names``: each sentence also carries a made-up name (a few rare word pieces). A tiny model
    memorises its members through them and is confident there, while a new name only adds noise:
    membership leaks through the confidence, beyond what the label carries (the filler-only
    sentences are too alike for a tiny model to memorise)."""
    rng = random.Random(seed)
    vocab = [POSITIVE, NEGATIVE] if classes == 2 else [[f"{w}{k}" for w in POSITIVE[:5]] for k in range(classes)]
    rows: dict[str, int] = {}
    while len(rows) < n:
        y = rng.randrange(classes)
        words = rng.choices(FILLER, k=rng.randint(3, 8)) + rng.choices(vocab[y], k=rng.randint(1, 2))
        if names:
            consonants = "bcdfghklmnprstvz"
            words.append("".join([*rng.choices(consonants, k=3), rng.choice("aeiou"), *rng.choices(consonants, k=2)]))
        if rng.random() < 0.2:
            words += rng.choices(vocab[(y + 1) % classes], k=2)
        rng.shuffle(words)
        if rng.random() < noise:
            y = rng.randrange(classes)
        rows.setdefault(" ".join(words), y)
    return sorted(rows.items())


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for text, y in rows:
            f.write(f"{text}\t{y}\n")
    return path


@pytest.fixture(scope="session")
def synthetic_tsv(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("data") / "train.tsv", synthetic_rows(700))


TINY_VARIANTS = tuple(v for v in VARIANTS if v != "none")  # every served variant


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, synthetic_tsv) -> Path:
    from veil.export.pipeline import BuildConfig, build

    out = tmp_path_factory.mktemp("build")
    build(
        BuildConfig(
            dataset=str(synthetic_tsv),
            model="tiny-bert",
            out=str(out),
            members=240,
            nonmembers=240,
            attacker=100,
            epochs=20,
            lr=2e-3,
            batch_size=16,
            max_length=32,
            variants=TINY_VARIANTS,
            leave_out=2,  # opt-in, exercised here (tests/integration/test_server.py)
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def server(tiny_build, tmp_path_factory):
    from veil.serving.launcher import TritonServer, repositories_for

    log = tmp_path_factory.mktemp("logs") / "tritonserver.log"
    srv = TritonServer(
        repositories_for(tiny_build / "model_repository"),
        log_file=log,
        extra_args=[
            "--http-header-forward-pattern=veil-client-id",
            "--grpc-header-forward-pattern=veil-client-id",
        ],
    )
    srv.start()
    yield srv
    srv.stop()


def tiny_repository(tiny_build: Path, out: Path, **changes: object) -> Path:
    """A model repository written from the tiny build's artifacts (no retraining) with some
    ``ServingOptions`` changed, e.g. ``mode="production"`` or a small ``max_clients``."""
    from veil.model_repository.writer import rewrite_repository

    return rewrite_repository(tiny_build, out, **changes)


PRODUCTION_MAX_CLIENTS = 32


@pytest.fixture(scope="session")
def production_stack(tiny_build, tmp_path_factory):
    """The documented production deployment on the tiny build: a production-mode repository (no
    veil_raw), tritonserver on loopback with restricted APIs, the gateway in front. A small
    ``max_clients`` lets the bounded-state test fill the adaptive-intensity table."""
    from veil.serving.production import ProductionServer

    root = tmp_path_factory.mktemp("production")
    repo = tiny_repository(
        tiny_build,
        root / "model_repository",
        mode="production",
        variants=("veil", "fixed_intensity"),
        max_clients=PRODUCTION_MAX_CLIENTS,
    )
    with ProductionServer(repo, log_file=root / "tritonserver.log") as stack:
        yield stack


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server (Debian's package, installed if missing) on a free loopback port."""
    from veil.serving.state_store import RedisServer

    with RedisServer() as srv:
        yield srv
