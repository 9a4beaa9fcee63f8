"""Text datasets and the disjoint splits that every later evaluation reuses.

Membership inference is only measured honestly when members and non-members come from one
source split, so the splits are drawn here once (seeded, deduplicated) and saved with the
artifacts; attacks, calibration and benchmarks read them back instead of redrawing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "VEIL_DATA_DIR"


def default_data_dir() -> Path | None:
    """``$VEIL_DATA_DIR`` if set, else ``../shared/data`` beside the checkout when it exists."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


@dataclass
class TextDataset:
    """Texts with integer labels and the label names they index."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return TextDataset([self.texts[i] for i in idx], self.labels[idx], list(self.label_names), self.source)


# Built-in datasets in ../shared/data: file layout and label names.
BUILTIN = {
    "sst2": {
        "train": "sst2/train.tsv",
        "test": "sst2/validation.tsv",
        "label_names": ["negative", "positive"],
    },
    "agnews": {
        "train": "agnews/train_sample.tsv",
        "test": "agnews/test.tsv",
        "label_names": ["World", "Sports", "Business", "Sci/Tech"],
    },
}


def _read_rows(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs from .tsv/.csv (first two columns) or .jsonl ({"text", "label"})."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                text = obj.get("text", obj.get("sentence"))
                if text is None or "label" not in obj:
                    raise ValueError(f"{path}:{n}: a JSONL row needs 'text' (or 'sentence') and 'label'")
                rows.append((str(text), str(obj["label"])))
        return rows
    if suffix not in (".tsv", ".csv", ".txt"):
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .tsv, .csv or .jsonl)")
    delimiter = "," if suffix == ".csv" else "\t"
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE)
        rows = [(r[0], r[1]) for r in reader if len(r) >= 2]
    if rows and rows[0][1].strip().lower() in ("label", "labels", "class"):
        rows = rows[1:]  # header
    return rows


def load_file(path: str | Path, *, label_names: Sequence[str] | None = None) -> TextDataset:
    """Load a local TSV/CSV/JSONL file; labels may be integers or names."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    raw = [label.strip() for _, label in rows]
    if label_names is None:
        if all(x.lstrip("-").isdigit() for x in raw):
            label_names = [str(i) for i in range(max(int(x) for x in raw) + 1)]
        else:
            label_names = sorted(set(raw))
    index = {name: i for i, name in enumerate(label_names)}
    labels = []
    for x in raw:
        if x in index:
            labels.append(index[x])
        elif x.lstrip("-").isdigit() and 0 <= int(x) < len(label_names):
            labels.append(int(x))
        else:
            raise ValueError(f"{path}: label {x!r} is not one of {list(label_names)}")
    texts = [text.strip() for text, _ in rows]
    return TextDataset(texts, np.array(labels), list(label_names), source=str(path))


def load_hf(dataset_id: str, split: str, *, text_column: str | None = None) -> TextDataset:
    """Load a Hugging Face dataset id (needs the optional ``datasets`` package and the hub)."""
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError as err:  # pragma: no cover - optional
        raise RuntimeError("loading a hub dataset needs `pip install datasets`") from err
    ds = datasets.load_dataset(dataset_id, split=split)
    text_column = text_column or next(c for c in ("sentence", "text", "content") if c in ds.column_names)
    names = ds.features["label"].names
    return TextDataset(list(ds[text_column]), np.array(ds["label"]), list(names), source=f"hf:{dataset_id}/{split}")


def load_dataset(name: str, split: str = "train", *, data_dir: str | Path | None = None) -> TextDataset:
    """``name`` is a built-in (sst2, agnews), a local file, or ``hf:<id>``."""
    if name.startswith("hf:"):
        return load_hf(name[3:], split)
    if name in BUILTIN:
        base = Path(data_dir) if data_dir else default_data_dir()
        if base is None:
            raise FileNotFoundError(f"dataset {name!r} needs a data folder: set ${DATA_ENV} or pass --data-dir")
        spec = BUILTIN[name]
        return load_file(base / spec[split], label_names=spec["label_names"])
    if Path(name).exists():
        return load_file(name)
    raise FileNotFoundError(f"unknown dataset {name!r}: not a built-in ({', '.join(BUILTIN)}), file or hf:<id>")


def dedupe(ds: TextDataset, *, exclude: Sequence[str] = ()) -> TextDataset:
    """Drop repeated texts (normalised by case and whitespace) and texts that appear in ``exclude``.

    A text labelled inconsistently is dropped entirely: it cannot be both member and non-member.
    """

    def key(t: str) -> str:
        return " ".join(t.lower().split())

    banned = {key(t) for t in exclude}
    seen: dict[str, int] = {}
    conflict: set[str] = set()
    for i, (t, y) in enumerate(zip(ds.texts, ds.labels, strict=True)):
        k = key(t)
        if not k or k in banned:
            continue
        if k in seen:
            if ds.labels[seen[k]] != y:
                conflict.add(k)
            continue
        seen[k] = i
    keep = [i for k, i in seen.items() if k not in conflict]
    return ds.subset(sorted(keep))


SPLIT_NAMES = ("member_eval", "member_calib", "nonmember_eval", "nonmember_calib", "attacker")


@dataclass
class Splits:
    """Disjoint index sets into one deduplicated source split.

    members = member_eval + member_calib (the target model trains on both);
    the risk evaluator is fitted on *_calib only; attacks are scored on *_eval only;
    the attacker's shadow/reference models train on ``attacker`` only.
    """

    dataset: str
    source_sha256: str
    seed: int
    indices: dict[str, list[int]] = field(default_factory=dict)

    @property
    def members(self) -> list[int]:
        return self.indices["member_eval"] + self.indices["member_calib"]

    def take(self, ds: TextDataset, name: str) -> TextDataset:
        if name == "members":
            return ds.subset(self.members)
        return ds.subset(self.indices[name])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        return cls(**json.loads(Path(path).read_text()))

    def check(self) -> None:
        seen: set[int] = set()
        for name, idx in self.indices.items():
            overlap = seen.intersection(idx)
            if overlap:
                raise ValueError(f"split {name} overlaps earlier splits at {sorted(overlap)[:5]}")
            seen.update(idx)


def fingerprint(ds: TextDataset) -> str:
    h = hashlib.sha256()
    for t, y in zip(ds.texts, ds.labels, strict=True):
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\t%d\n" % int(y))
    return h.hexdigest()


def make_splits(
    ds: TextDataset,
    *,
    sizes: dict[str, int],
    seed: int,
    dataset_name: str = "",
    exclude: Sequence[int] = (),
) -> Splits:
    """Draw disjoint, seeded splits; every name in ``SPLIT_NAMES`` must be sized (0 allowed).

    ``ds`` must already be deduplicated (see :func:`dedupe`); rows in ``exclude`` are never drawn
    (e.g. an attacker pool fixed across seeds).
    """
    missing = set(SPLIT_NAMES) - set(sizes)
    if missing:
        raise ValueError(f"sizes missing for {sorted(missing)}")
    total = sum(sizes[n] for n in SPLIT_NAMES)
    available = np.setdiff1d(np.arange(len(ds)), np.asarray(exclude, dtype=np.int64))
    if total > len(available):
        raise ValueError(f"splits need {total} rows but the deduplicated source has {len(available)} available")
    order = available[np.random.default_rng(seed).permutation(len(available))]
    out: dict[str, list[int]] = {}
    start = 0
    for name in SPLIT_NAMES:
        out[name] = sorted(int(i) for i in order[start : start + sizes[name]])
        start += sizes[name]
    splits = Splits(dataset=dataset_name, source_sha256=fingerprint(ds), seed=seed, indices=out)
    splits.check()
    return splits
