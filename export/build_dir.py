"""The one owner of a build folder's layout (what ``veil-build`` writes, what everything else reads).

    build/<dataset>-<model>/
        splits.json          the seeded, disjoint row indices (members, non-members, attacker)
        trained.json         what the fine-tuned model was trained on (for --resume)
        hf/                  the fine-tuned model and tokenizer (Hugging Face format)
        leave_out/part<k>/   the leave-out part models (trained.json each, for --resume)
        model.onnx           the exported classifier
        defense/             the calibrated defense artifact (and the part models' part<k>.onnx)
        model_repository/    the Triton repository (common/ + platform folders, options.json)
        build.json           what was measured on the way

Nothing else spells these names: code asks a :class:`BuildDir` for a path, its options, its splits
or a split's texts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil.export.data import Splits, TextDataset, dedupe, load_dataset


@dataclass(frozen=True)
class BuildDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # --- paths ----------------------------------------------------------------------------------------
    @property
    def splits_file(self) -> Path:
        return self.root / "splits.json"

    @property
    def trained_file(self) -> Path:
        return self.root / "trained.json"

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    def leave_out(self, part: int) -> Path:
        return self.root / "leave_out" / f"part{part}"

    @property
    def onnx(self) -> Path:
        return self.root / "model.onnx"

    @property
    def defense(self) -> Path:
        return self.root / "defense"

    @property
    def repository(self) -> Path:
        return self.root / "model_repository"

    @property
    def summary_file(self) -> Path:
        return self.root / "build.json"

    @property
    def server_log(self) -> Path:
        return self.root / "tritonserver.log"

    def report(self, name: str) -> Path:
        """A file a later step writes beside the build (``demo.json``, ``defense_bench.md``, ...)."""
        return self.root / name

    # --- contents -------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.summary_file.is_file()

    def summary(self) -> dict:
        if not self.exists():
            raise FileNotFoundError(f"{self.summary_file} is missing: run veil-build (./veil.sh main) first")
        return json.loads(self.summary_file.read_text())

    def options(self):
        """The repository's ``ServingOptions`` (input names, classes, max length, ...)."""
        from veil.model_repository.writer import read_options

        return read_options(self.repository)

    def splits(self) -> Splits:
        return Splits.load(self.splits_file)

    def dataset(self, *, data_dir: str | None = None) -> TextDataset:
        """The deduplicated training split the build drew its rows from."""
        cfg = self.summary()["config"]
        return dedupe(load_dataset(cfg["dataset"], "train", data_dir=data_dir or cfg.get("data_dir")))

    def rows(self, split: str, *, limit: int | None = None, data_dir: str | None = None) -> TextDataset:
        """One split's rows (texts and labels), the first ``limit`` of them."""
        part = self.splits().take(self.dataset(data_dir=data_dir), split)
        return part.subset(range(min(limit, len(part)))) if limit is not None else part

    def texts(self, split: str, *, limit: int | None = None, data_dir: str | None = None) -> list[str]:
        return self.rows(split, limit=limit, data_dir=data_dir).texts

    def labelled(self, *splits: str, limit: int | None = None) -> tuple[list[str], np.ndarray]:
        """Texts and labels of several splits, concatenated (each cut to ``limit``)."""
        parts = [self.rows(s, limit=limit) for s in splits]
        return [t for p in parts for t in p.texts], np.concatenate([p.labels for p in parts])
