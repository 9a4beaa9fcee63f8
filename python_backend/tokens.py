"""text -> tokens: validation, truncation and shape-bucketed padding for the classifier.

Texts longer than the model's maximum length are truncated to ``max_length`` tokens (documented
behaviour, not an error); texts over ``max_text_bytes`` bytes, empty or whitespace-only texts and
invalid UTF-8 are the caller's errors. Each request is padded to a power-of-two length bucket, so
Triton's dynamic batcher can merge requests of similar length into one classifier batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veil import wire
from veil.python_backend.fingerprint import SIGNATURE_SIZE, common_tokens, sequence_hash, text_signature


class InputError(ValueError):
    """The caller sent something unusable; maps to HTTP 400 / gRPC INVALID_ARGUMENT."""


def decode_texts(raw: Sequence[object], *, max_text_bytes: int) -> list[str]:
    """Bytes (or str) from a TYPE_STRING tensor -> validated Python strings."""
    texts = []
    for i, item in enumerate(raw):
        if isinstance(item, bytes | bytearray | np.bytes_):
            if len(item) > max_text_bytes:
                raise InputError(f"text at row {i} is {len(item)} bytes; the limit is {max_text_bytes}")
            try:
                text = bytes(item).decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"text at row {i} is not valid UTF-8 ({err.reason} at byte {err.start})") from err
        elif isinstance(item, str):
            text = item
            if len(text.encode("utf-8", "surrogatepass")) > max_text_bytes:
                raise InputError(f"text at row {i} is over {max_text_bytes} bytes")
        else:
            raise InputError(f"text at row {i} has type {type(item).__name__}; send UTF-8 strings")
        if not text.strip():
            raise InputError(f"text at row {i} is empty or whitespace only")
        texts.append(text)
    return texts


def bucket_length(n: int, *, max_length: int, minimum: int = 8) -> int:
    """Smallest power of two >= n (at least ``minimum``), capped at ``max_length``."""
    length = minimum
    while length < n:
        length *= 2
    return min(length, max_length)


COMMON_TOKENS_FILE = "veil_common_tokens.json"
"""In the tokenizer folder: the training texts' most frequent token ids, left out of the content
sketch (:func:`write_common_tokens`). A folder without it sketches every token: more distinct
texts look contained, so callers get more protection and less useful outputs, never less."""


class Fingerprinter:
    """Token rows -> ``fingerprint`` (MinHash and content sketch of each row's tokens: the member
    gate and adaptive intensity, :mod:`fingerprint`) and ``sequence`` (a hash of the token ids in
    order: the member gate's test for an exact copy of a training text). The tokenizer step computes
    them for the ``ensemble`` layout; a defense step hosting the classifier computes them itself from
    the tokens it classifies, while the classifier runs."""

    def __init__(self, *, special_ids: Sequence[int], common_ids: Sequence[int]) -> None:
        self.special_ids = [int(t) for t in special_ids]
        self.common_ids = [int(t) for t in common_ids]

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path, *, tokenizer=None) -> Fingerprinter:
        """The fingerprinter of the tokenizer folder a build wrote (its special tokens and its
        :data:`COMMON_TOKENS_FILE`)."""
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        common = Path(tokenizer_dir) / COMMON_TOKENS_FILE
        ids = [int(t) for t in json.loads(common.read_text())] if common.exists() else []
        return cls(special_ids=tokenizer.all_special_ids, common_ids=ids)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """{FINGERPRINT: [n, SIGNATURE_SIZE] int32, SEQUENCE: [n, 1] int64} of [n, L] token rows."""
        return {
            wire.FINGERPRINT: text_signature(
                input_ids, attention_mask, special_ids=self.special_ids, common_ids=self.common_ids
            ),
            wire.SEQUENCE: sequence_hash(input_ids, attention_mask)[:, None],
        }


class TextEncoder:
    """A Hugging Face fast tokenizer loaded from a local folder, producing the model's inputs
    plus, unless told not to, their :class:`Fingerprinter` tensors."""

    def __init__(self, tokenizer_dir: str | Path, *, input_names: Sequence[str], max_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.input_names = list(input_names)
        self.max_length = int(max_length)
        self.fingerprinter = Fingerprinter.from_dir(tokenizer_dir, tokenizer=self.tokenizer)

    def __call__(self, texts: list[str], *, fingerprints: bool = True) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_token_type_ids="token_type_ids" in self.input_names,
            return_attention_mask=True,
        )
        longest = max(len(ids) for ids in enc["input_ids"])
        length = bucket_length(longest, max_length=self.max_length)
        pad_id = self.tokenizer.pad_token_id or 0
        out = {}
        for name in self.input_names:
            fill = pad_id if name == "input_ids" else 0
            arr = np.full((len(texts), length), fill, dtype=np.int64)
            for r, seq in enumerate(enc[name]):
                arr[r, : len(seq)] = seq
            out[name] = arr
        if fingerprints:
            out.update(self.fingerprinter(out["input_ids"], out["attention_mask"]))
        return out


def write_common_tokens(tokenizer_dir: str | Path, texts: Sequence[str], *, max_length: int) -> list[int]:
    """Write the :data:`COMMON_TOKENS_FILE` of ``texts`` (the training texts) into the tokenizer folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    special = set(tokenizer.all_special_ids)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    common = common_tokens([t for t in row if t not in special] for row in ids)
    (Path(tokenizer_dir) / COMMON_TOKENS_FILE).write_text(json.dumps(common))
    return common


def text_signatures(
    tokenizer_dir: str | Path, input_names: Sequence[str], texts: list[str], *, max_length: int
) -> np.ndarray:
    """[n, SIGNATURE_SIZE] the signatures the served tokenizer computes for ``texts`` (the member
    index's keys, and what an offline replay of the defense step needs)."""
    return _encoded(tokenizer_dir, input_names, texts, max_length=max_length)[wire.FINGERPRINT]


def text_fingerprints(
    tokenizer_dir: str | Path, input_names: Sequence[str], texts: list[str], *, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`text_signatures`, [n] the sequence hashes the served tokenizer computes), one encoding."""
    out = _encoded(tokenizer_dir, input_names, texts, max_length=max_length)
    return out[wire.FINGERPRINT], out[wire.SEQUENCE][:, 0]


def _encoded(
    tokenizer_dir: str | Path, input_names: Sequence[str], texts: list[str], *, max_length: int
) -> dict[str, np.ndarray]:
    """The fingerprint and sequence tensors of ``texts``, encoded 256 at a time."""
    encoder = TextEncoder(tokenizer_dir, input_names=input_names, max_length=max_length)
    parts = [encoder(texts[i : i + 256]) for i in range(0, len(texts), 256)]
    keys = (wire.FINGERPRINT, wire.SEQUENCE)
    if not parts:
        return {wire.FINGERPRINT: np.zeros((0, SIGNATURE_SIZE), np.int32), wire.SEQUENCE: np.zeros((0, 1), np.int64)}
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}
