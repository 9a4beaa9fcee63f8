"""What the content sketch and the partial-match look-up cost the member gate: the member-index
look-up alone, A against B against C.

    python -m veil.loadtest.index_bench                      # SST-2, 60,000 training texts indexed
    python -m veil.loadtest.index_bench --dataset agnews --members 20000

The dataset's first ``members`` training texts are indexed with the packaged MiniLM tokenizer
(its common tokens written from those texts, as ``veil-build`` does); queries are the next texts
(non-members) and third-crops of members, in batches of 1, 8 and 64. Each batch is looked up by
the MinHash-only index (A: an artifact built before the sketch), by the index with sketches (B:
the Jaccard gate alone) and by that look-up plus the partial-match one (C: what the served step
runs with a partial-match map), in turn, and the medians are printed with their ratios. Then the
share of those queries the partial gate fires on, for indexes of 1,000 to all training texts.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veil.export.crops import crops
from veil.export.data import dedupe, load_dataset
from veil.export.train import packaged_minilm
from veil.python_backend.calibrate import CalibrationConfig
from veil.python_backend.fingerprint import minhash, sketch
from veil.python_backend.member_index import MemberIndex
from veil.python_backend.tokens import text_signatures, write_common_tokens

BATCHES = (1, 8, 64)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--members", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=60)
    args = ap.parse_args(argv)
    ds = dedupe(load_dataset(args.dataset, "train"))
    n = min(args.members, len(ds) - 2_000)
    members, others = ds.texts[:n], ds.texts[n : n + 1_000]
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tokenizer"
        shutil.copytree(packaged_minilm(), tok)
        write_common_tokens(tok, members, max_length=128)

        def sig(texts: list[str]) -> np.ndarray:
            return text_signatures(tok, ["input_ids", "attention_mask"], texts, max_length=128)

        indexed = sig(members)
        queries = {
            "non-members": sig(others),
            "third-crops of members": sig([crops(t, 1, 0.3, "subset")[0] for t in members[:1_000]]),
        }
    old = MemberIndex(minhash(indexed), ds.labels[:n])
    new = MemberIndex(minhash(indexed), ds.labels[:n], sketches=sketch(indexed))
    print(
        f"{args.dataset}: {n} training texts indexed; median ms per look-up"
        " (A MinHash only, B with sketches, C B and partial matches)"
    )
    for name, q in queries.items():
        for b in BATCHES:
            ta, tb, tc = [], [], []
            for r in range(args.repeats):
                rows = q[(r * b) % (len(q) - b) :][:b]
                t = time.perf_counter()
                old.nearest(minhash(rows))
                ta.append(time.perf_counter() - t)
                t = time.perf_counter()
                new.nearest(minhash(rows), sketches=sketch(rows))
                tb.append(time.perf_counter() - t)
                t = time.perf_counter()
                new.nearest(minhash(rows), sketches=sketch(rows))
                new.partial(sketch(rows))
                tc.append(time.perf_counter() - t)
            a, bb, c = (statistics.median(x) for x in (ta, tb, tc))
            print(
                f"  {name:24s} batch {b:3d}: A {1e3 * a:7.3f}  B {1e3 * bb:7.3f}  C {1e3 * c:7.3f}"
                f"  B/A {bb / a:4.2f}  C/B {c / bb:4.2f}",
                flush=True,
            )
    # How often the partial gate fires as the index grows (SST-2's rows are phrases of the same sentences).
    lo = CalibrationConfig().partial_gate[0]
    rng = np.random.default_rng(0)
    print(f"share of queries with a partial match (overlap >= {lo}) by training texts indexed")
    for size in sorted({min(s, n) for s in (1_000, 3_000, 10_000, n)}):
        rows = np.sort(rng.choice(n, size, replace=False))
        part = MemberIndex(minhash(indexed[rows]), ds.labels[:n][rows], sketches=sketch(indexed[rows]))
        shares = {name: float((part.partial(sketch(q))[0] >= lo).mean()) for name, q in queries.items()}
        print(f"  {size:6d}: " + ", ".join(f"{name} {v:.1%}" for name, v in shares.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
