"""``python -m veil.privacy``: the paper's tables for our models, through the real server.

    python -m veil.privacy                     # SST-2 and AG News, 3 fresh seeds (hours on 2 cores)
    python -m veil.privacy --datasets sst2 --seeds 11
    python -m veil.privacy --quick             # tiny model, one seed, CI-sized

Writes reports/privacy/privacy.md, privacy.json, frontier and ROC plots. Protocol and metrics:
docs/evaluation-instrument.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence

from veil.privacy.experiment import EvalConfig, evaluate, quick, reassess, saved_results
from veil.privacy.models import VARIANTS
from veil.privacy.report import write_report

# Per-dataset settings (AG News descriptions are longer; 64 tokens keeps most of them and the CPU budget).
DATASET_DEFAULTS = {"sst2": {"max_length": 64}, "agnews": {"max_length": 64}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="sst2,agnews", help="comma-separated: sst2, agnews, a file, or hf:<id>")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="minilm")
    p.add_argument("--seeds", default=",".join(map(str, EvalConfig.seeds)), help="report seeds (fresh)")
    p.add_argument("--dev-seed", type=int, default=EvalConfig.dev_seed, help="development seed (never reported)")
    p.add_argument("--members", type=int, default=EvalConfig.members)
    p.add_argument("--nonmembers", type=int, default=EvalConfig.nonmembers)
    p.add_argument("--pool", type=int, default=EvalConfig.pool)
    p.add_argument("--references", type=int, default=EvalConfig.references)
    p.add_argument("--epochs", type=int, default=EvalConfig.epochs)
    p.add_argument("--dp-epsilons", default="8,1", help="comma-separated; empty for none")
    p.add_argument(
        "--dp-lr-grid",
        default=",".join(f"{x:g}" for x in EvalConfig.dp_lr_grid),
        help="DP-SGD learning rates tried per epsilon on the development seed; empty: --dp-lr only",
    )
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--query-rows", type=int, default=EvalConfig.query_rows, help="rows per side for query attacks")
    p.add_argument("--edits", type=int, default=EvalConfig.edits)
    p.add_argument("--repeats", type=int, default=EvalConfig.repeats)
    p.add_argument("--query-variants", default=",".join(EvalConfig.query_variants), help="attacked in every mode")
    p.add_argument("--bootstrap", type=int, default=EvalConfig.bootstrap)
    p.add_argument(
        "--crossfit-splits",
        type=int,
        default=EvalConfig.crossfit_splits,
        help="random halvings the upper-bound attacker is cross-fitted over (averaged)",
    )
    p.add_argument(
        "--leave-out",
        type=int,
        default=EvalConfig.leave_out,
        help="leave-out part models in each target's build (veil-build --leave-out; default 0: none, as served)",
    )
    p.add_argument("--work-dir", default="build/privacy")
    p.add_argument("--out", default="reports/privacy")
    p.add_argument("--quick", action="store_true", help="tiny model, small data, one seed (for CI)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the per-seed results an earlier run saved in --work-dir (same settings)",
    )
    p.add_argument(
        "--reassess",
        action="store_true",
        help="with --report-only: first re-run the attacks and utility on the outputs each seed saved",
    )
    a = p.parse_args(argv)
    if a.reassess and not a.report_only:
        p.error("--reassess re-assesses saved outputs: use it with --report-only")
    results = {}
    t0 = time.perf_counter()
    command = ("python -m veil.privacy " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))).strip()
    for dataset in [d.strip() for d in a.datasets.split(",") if d.strip()]:
        cfg = EvalConfig(
            dataset=dataset,
            data_dir=a.data_dir,
            model=a.model,
            work_dir=a.work_dir,
            seeds=tuple(int(s) for s in a.seeds.split(",")),
            dev_seed=a.dev_seed,
            query_rows=a.query_rows,
            edits=a.edits,
            repeats=a.repeats,
            query_variants=tuple(v.strip() for v in a.query_variants.split(",") if v.strip()),
            bootstrap=a.bootstrap,
            crossfit_splits=a.crossfit_splits,
            members=a.members,
            nonmembers=a.nonmembers,
            pool=a.pool,
            references=a.references,
            epochs=a.epochs,
            leave_out=a.leave_out,
            dp_epsilons=tuple(float(e) for e in a.dp_epsilons.split(",") if e.strip()),
            dp_lr_grid=tuple(float(x) for x in a.dp_lr_grid.split(",") if x.strip()),
            variants=tuple(v.strip() for v in a.variants.split(",") if v.strip()),
            progress=not a.quiet,
            **DATASET_DEFAULTS.get(dataset, {}),
        )
        if a.quick:
            cfg = quick(cfg)
        if a.reassess:
            reassess(cfg)
        results[dataset] = saved_results(cfg) if a.report_only else evaluate(cfg)
        # Written after every dataset, so a long run leaves a report of what it has finished.
        path = write_report(results, a.out, command=command)
    print(path.read_text())
    print(f"written: {path} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
