"""Batch neighbours: are one text's served bytes the same whatever it is sent with?

    python -m veil.loadtest.neighbours --build-dir build/privacy/agnews-minilm/seed11/target

A caller chooses a text's neighbours: the other rows of its request (their longest sets the
padding of every row's tokens) and, through timing, the other requests the server merges with it
into one batch. If the classifier's (or a leave-out part model's) last bits moved with the batch, a
score on a bin's edge would be served one way or the other, and a caller could average its sends
into more than the bin. Each text (``member_eval`` training texts and ``nonmember_eval`` texts) is
sent alone, in multi-row requests beside a longer text, and in concurrent one-row requests that
the server may merge; every send is compared byte for byte with the first. The integration test
(tests/integration/test_server.py) asserts the same on the tiny build; this measures a real one
(exit status 1 if any text's bytes moved), worth running on a GPU host too (``--grpc-url`` of a
served repository), where kernels may be picked by batch shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from rich.console import Console

from veil.client.triton import VeilClient
from veil.export.build_dir import BuildDir
from veil.loadtest.config import DEFENDED, RAW, RunConfig, add_serving_option, parsed_serving
from veil.loadtest.server import serving
from veil.python_backend import variants

FIXED = variants.get("fixed_intensity").ensemble


def sends(grpc_url: str, model: str, texts: list[str], *, row_batch: int, concurrency: int) -> dict[str, np.ndarray]:
    """Each way of sending ``texts`` to ``model`` -> [N, C] probabilities in the texts' order."""
    long_text = max(texts, key=len)
    with VeilClient(grpc_url, protocol="grpc") as c:
        alone = np.concatenate([c.classify([t], model=model)[0] for t in texts])
        beside = []
        for start in range(0, len(texts), row_batch - 1):  # the longest text first in every request
            chunk = texts[start : start + row_batch - 1]
            beside.append(c.classify([long_text, *chunk], model=model, batch_size=row_batch)[0][1:])

    def one(t: str) -> np.ndarray:
        with VeilClient(grpc_url, protocol="grpc") as c:
            return c.classify([t], model=model)[0]

    with ThreadPoolExecutor(concurrency) as pool:
        merged = np.concatenate(list(pool.map(one, texts)))
    return {"alone": alone, "beside the longest": np.concatenate(beside), "merged": merged}


def compare(outputs: dict[str, np.ndarray], member: np.ndarray) -> dict[str, dict[str, int]]:
    """Per way of sending: how many texts' bytes differ from the first way's."""
    first = next(iter(outputs.values())).view(np.uint32)
    out = {}
    for way, p in outputs.items():
        differ = (p.view(np.uint32) != first).any(axis=1)
        out[way] = {"texts": len(p), "differ": int(differ.sum()), "members": int(differ[member].sum())}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-dir", required=True)
    p.add_argument("--out", default=None, help="folder for neighbours.json (default <build>/loadtest-neighbours)")
    p.add_argument(
        "--models", default=f"{FIXED},{RAW}", help=f"comma-separated ({DEFENDED} moves with its caller's state)"
    )
    p.add_argument("--rows", type=int, default=200, help="texts per side")
    p.add_argument("--row-batch", type=int, default=16, help="rows per multi-row request")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--grpc-url", default=None, help="a running server (default: start the build's repository)")
    add_serving_option(p)
    a = p.parse_args(argv)
    if a.row_batch < 2:
        p.error("--row-batch must be at least 2 (the longest text and one more)")
    changes = parsed_serving(p, a.serving)
    build = BuildDir(a.build_dir)
    members, nonmembers = build.texts("member_eval", limit=a.rows), build.texts("nonmember_eval", limit=a.rows)
    texts, member = members + nonmembers, np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    out = Path(a.out or Path(a.build_dir) / "loadtest-neighbours")
    console = Console()
    summary = {}
    cfg = RunConfig(build_dir=a.build_dir, out_dir=str(out), serving=changes)
    with nullcontext((a.grpc_url,)) if a.grpc_url else serving(cfg, console) as (grpc_url, *_):
        for model in [m for m in a.models.split(",") if m]:
            with console.status(f"{model}: {len(texts)} texts, three ways"):
                served = sends(grpc_url, model, texts, row_batch=a.row_batch, concurrency=a.concurrency)
            summary[model] = compare(served, member)
            console.print(model, summary[model])
    out.mkdir(parents=True, exist_ok=True)
    (out / "neighbours.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(w["differ"] == 0 for s in summary.values() for w in s.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
