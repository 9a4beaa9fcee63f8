"""The versioned defense artifact: risk evaluator weights plus everything calibrated with them.

Two files: ``defense.json`` (metadata, calibration metrics, the sha256 of the tensor file and of
the classifier it was fitted for) and ``defense.safetensors`` (weights, feature statistics, class
means). Loading verifies all of it and raises :class:`ArtifactError` on any mismatch, so a
defended model with a missing, corrupt or foreign artifact never becomes ready.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from veil.python_backend.fingerprint import minhash, sketch
from veil.python_backend.member_index import MemberIndex
from veil.python_backend.risk import RiskEvaluator
from veil.python_backend.selective import SelectiveTables

FORMAT_VERSION = 2
INDEX_PREFIX = "member_index."
META_FILE = "defense.json"
TENSOR_FILE = "defense.safetensors"


def part_model_file(directory: str | Path, part: int) -> Path:
    """Leave-out part model ``part``'s ONNX file in an artifact folder."""
    return Path(directory) / f"part{part}.onnx"


class ArtifactError(RuntimeError):
    """The defense artifact cannot be used; the defended endpoint must not serve."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class DefenseArtifact:
    num_classes: int
    classifier_sha256: str
    tau: list[float]
    """Risk threshold per predicted class: outputs with r(z) > tau[c] are perturbed until r < tau[c]."""
    eps: float
    """Base per-dimension budget (logit units) at intensity 1."""
    target_shift: list[float]
    """Per predicted class, score units the target is lowered by at threat 1 (adaptive intensity)."""
    temperature: float
    """Temperature of the temperature-only ablation (same mean confidence as Veil on calibration)."""
    noise_norm: float
    """L2 size of the random-noise ablation (Veil's mean |delta| on calibration)."""
    hidden: int
    label_names: list[str]
    metrics: dict = field(default_factory=dict)
    risk_state: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    selective: SelectiveTables | None = None
    """The selective defense's calibrated tables (None: only the level-set variants can serve)."""
    index_signatures: np.ndarray | None = field(default=None, repr=False)
    """[N, S] int32 signatures of the training texts (the member index): MinHash then content
    sketch; an artifact built before the sketch holds the MinHash part only."""
    index_labels: np.ndarray | None = field(default=None, repr=False)
    index_sequences: np.ndarray | None = field(default=None, repr=False)
    """[N] int64 token-sequence hashes of the training texts (the gate's copy test; None: an
    artifact built before them, every whole match served as a copy)."""
    index_parts: np.ndarray | None = field(default=None, repr=False)
    """[N] int64 the leave-out part model that never trained on each training text (None: no part
    models, whole matches go through the maps)."""
    part_models: list[str] = field(default_factory=list)
    """sha256 of each leave-out part model's ONNX file beside the artifact (:func:`part_model_file`),
    checked at load; empty: none."""
    tracker_common: list[int] | None = None
    """Content-sketch values adaptive intensity leaves out (frequent in the calibration
    non-members: :func:`fingerprint.common_values`); None (an artifact built before it): none."""
    format_version: int = FORMAT_VERSION

    def tracker_mask(self) -> np.ndarray | None:
        """:attr:`tracker_common` as the sorted int32 array :func:`fingerprint.without` takes."""
        return None if self.tracker_common is None else np.asarray(self.tracker_common, dtype=np.int32)

    def member_index(self) -> MemberIndex | None:
        if self.index_signatures is None or self.index_labels is None:
            return None
        sig = self.index_signatures
        return MemberIndex(
            minhash(sig),
            self.index_labels,
            sketches=sketch(sig),
            sequences=self.index_sequences,
            parts=self.index_parts,
        )

    def thresholds(self, predicted: np.ndarray) -> np.ndarray:
        """tau of each row's predicted class."""
        return np.asarray(self.tau, dtype=np.float64)[np.asarray(predicted, dtype=np.int64)]

    def risk_evaluator(self, device: str | torch.device = "cpu") -> RiskEvaluator:
        model = RiskEvaluator(self.num_classes, hidden=self.hidden)
        model.load_state_dict(self.risk_state)
        return model.to(device).eval()

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.risk_state.items()}
        if self.index_signatures is not None and self.index_labels is not None:
            tensors[INDEX_PREFIX + "signatures"] = torch.from_numpy(
                np.ascontiguousarray(self.index_signatures, np.int32)
            )
            tensors[INDEX_PREFIX + "labels"] = torch.from_numpy(np.ascontiguousarray(self.index_labels, np.int64))
            if self.index_sequences is not None:
                tensors[INDEX_PREFIX + "sequences"] = torch.from_numpy(
                    np.ascontiguousarray(self.index_sequences, np.int64)
                )
            if self.index_parts is not None:
                tensors[INDEX_PREFIX + "parts"] = torch.from_numpy(np.ascontiguousarray(self.index_parts, np.int64))
        save_file(tensors, directory / TENSOR_FILE)
        meta = asdict(self)
        for key in ("risk_state", "index_signatures", "index_labels", "index_sequences", "index_parts"):
            meta.pop(key)
        meta["selective"] = self.selective.to_json() if self.selective is not None else None
        meta["tensors_sha256"] = sha256_file(directory / TENSOR_FILE)
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, expected_classifier_sha256: str | None = None) -> DefenseArtifact:
        directory = Path(directory)
        meta_path, tensor_path = directory / META_FILE, directory / TENSOR_FILE
        for p in (meta_path, tensor_path):
            if not p.is_file():
                raise ArtifactError(f"defense artifact incomplete: {p} is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"defense artifact {meta_path} is not valid JSON: {err}") from err
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"defense artifact format {meta.get('format_version')!r} is not {FORMAT_VERSION}")
        digest = sha256_file(tensor_path)
        if digest != meta.get("tensors_sha256"):
            raise ArtifactError(f"defense artifact {tensor_path} is corrupt (sha256 mismatch)")
        if expected_classifier_sha256 is not None and meta.get("classifier_sha256") != expected_classifier_sha256:
            raise ArtifactError(
                "defense artifact was calibrated for classifier "
                f"{str(meta.get('classifier_sha256'))[:12]}…, but the served classifier is "
                f"{expected_classifier_sha256[:12]}…; recalibrate it for this model"
            )
        meta.pop("tensors_sha256")
        if len(meta.get("tau", [])) != meta.get("num_classes"):
            raise ArtifactError(
                f"defense artifact {meta_path} has no per-class tau for its {meta.get('num_classes')} classes"
            )
        try:
            tensors = load_file(tensor_path)
            index = {
                k[len(INDEX_PREFIX) :]: tensors.pop(k).numpy() for k in list(tensors) if k.startswith(INDEX_PREFIX)
            }
            tables = meta.pop("selective", None)
            art = cls(
                **meta,
                risk_state=tensors,
                selective=SelectiveTables.from_json(tables) if tables is not None else None,
                index_signatures=index.get("signatures"),
                index_labels=index.get("labels"),
                index_sequences=index.get("sequences"),
                index_parts=index.get("parts"),
            )
            n = None if art.index_labels is None else len(art.index_labels)
            if (art.index_parts is None) != (not art.part_models) or (
                art.index_parts is not None
                and (art.index_parts.shape != (n,) or not np.isin(art.index_parts, range(len(art.part_models))).all())
            ):
                raise ValueError("leave-out parts must be [N] part numbers beside one file per part model")
            for k, digest in enumerate(art.part_models):
                path = part_model_file(directory, k)
                if not path.is_file() or sha256_file(path) != digest:
                    raise ValueError(f"leave-out part model {path.name} is missing or not the one calibrated")
            art.risk_evaluator()  # shapes must fit
            if art.selective is not None and art.selective.num_classes != art.num_classes:
                raise ValueError("selective tables are for another number of classes")
        except Exception as err:
            raise ArtifactError(f"defense artifact {directory} cannot be loaded: {err}") from err
        return art
