"""What shapes a load-test run: the settings, the goals it is judged against, and the round order.

Kept apart from the numbers and the rendering so that a saved ``report.json`` can be re-read, and
the runner's command line built, without either.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veil.model_repository.spec import DEFENDED, RAW, UNDEFENDED

__all__ = [
    "DEFENDED",
    "GOALS",
    "KNEE_SHARE",
    "RAW",
    "STAT_FIELDS",
    "UNDEFENDED",
    "RunConfig",
    "add_serving_option",
    "parsed_serving",
    "plan",
    "serving_changes",
]

STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
GOALS = {"p50": 1.05, "p99": 1.10, "throughput": 0.95}  # defended/undefended latency at most, throughput at least
KNEE_SHARE = 0.95  # the knee: the fewest users at which raw throughput reaches 95% of its best


@dataclass
class RunConfig:
    """Everything that shapes a run (stored in the report so numbers can be reproduced)."""

    build_dir: str = "build/sst2-minilm"
    out_dir: str | None = None
    quick: bool = False
    grpc_users: tuple[int, ...] = (1, 2, 4, 8, 16)
    http_users: tuple[int, ...] = (1, 8)
    rounds: int = 2
    round_seconds: float = 3.0
    warmup_seconds: float = 0.5
    max_requests: int = 0  # per round and ensemble; 0: bounded by time only
    batch: int = 1
    client_ids: str = "per-user"
    split: str = "nonmember_eval"
    texts: int = 1500
    raw: str = RAW
    defended: str = DEFENDED
    baseline: str = UNDEFENDED
    """The undefended deployment the goals are judged against (tokenizer -> classifier with softmax in
    its graph); ``raw`` (the defended path's shape with a python softmax step) is reported beside it."""
    perf_analyzer: bool = True
    perf_request_count: int = 50
    grpc_url: str | None = None
    http_url: str | None = None
    metrics_url: str | None = None
    serving: dict[str, Any] = field(default_factory=dict)
    """ServingOptions changes (e.g. ``defense_layout``): the build's repository is written again with
    them into the report folder and served from there (a lever measured without a rebuild)."""

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> RunConfig:
        """CI size: two gRPC user counts, HTTP at one, one short round each, bounded request counts."""
        base = cls(
            quick=True,
            grpc_users=(1, 2),
            http_users=(1,),
            rounds=1,
            round_seconds=1.0,
            warmup_seconds=0.0,
            max_requests=25,
            texts=200,
            perf_analyzer=False,
        )
        return replace(base, **overrides)

    @property
    def references(self) -> tuple[str, ...]:
        """What the defended ensemble is compared with: the goals' reference first."""
        return tuple(dict.fromkeys(m for m in (self.baseline, self.raw) if m and m != self.defended))

    @property
    def models(self) -> tuple[str, ...]:
        return (*self.references, self.defended)

    def output_dir(self) -> Path:
        """Where the reports go: ``--out``, else a folder of the build (a separate one for CI-size runs)."""
        if self.out_dir:
            return Path(self.out_dir)
        return Path(self.build_dir) / ("loadtest-quick" if self.quick else "loadtest")


def plan(cfg: RunConfig) -> list[tuple[str, int, int, str]]:
    """(protocol, users, round, model) in run order: the models forwards, then backwards (ABC CBA) per
    user count, so slow drift hits every model alike."""
    out = []
    for protocol, levels in (("grpc", cfg.grpc_users), ("http", cfg.http_users)):
        for users in levels:
            for r in range(cfg.rounds):
                order = cfg.models if r % 2 == 0 else cfg.models[::-1]
                out.extend((protocol, users, r, m) for m in order)
    return out


def add_serving_option(p: argparse.ArgumentParser) -> None:
    """The ``--serving KEY=VALUE`` flag the tools that start a server share (runner, ab, timing)."""
    p.add_argument(
        "--serving",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="serve the build's repository rewritten with this ServingOptions change (repeatable), e.g."
        " defense_layout=ensemble, max_queue_delay_us=500, classifier_threads=1",
    )


def parsed_serving(p: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, object]:
    """:func:`serving_changes`, a malformed pair being the command line's error."""
    try:
        return serving_changes(pairs)
    except ValueError as err:
        p.error(str(err))


def serving_changes(pairs: Sequence[str]) -> dict[str, object]:
    """``--serving key=value`` pairs as ServingOptions changes (integers where the field is one);
    ``ValueError`` names a malformed pair or an unknown key."""
    import dataclasses

    from veil.model_repository.spec import ServingOptions

    fields = {f.name: f for f in dataclasses.fields(ServingOptions)}
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--serving {pair!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        out[key] = int(value) if isinstance(fields[key].default, int) else value
    return out
