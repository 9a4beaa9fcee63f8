from __future__ import annotations

import numpy as np
import pytest

from veil.export.train import packaged_minilm
from veil.python_backend.tokens import InputError, TextEncoder, bucket_length, decode_texts


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(packaged_minilm(), input_names=["input_ids", "attention_mask", "token_type_ids"], max_length=32)


def test_decode_valid():
    assert decode_texts([b"caf\xc3\xa9", "plain"], max_text_bytes=100) == ["café", "plain"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty or whitespace"),
        (b"   \t\n", "empty or whitespace"),
        (b"\xff\xfeabc", "not valid UTF-8"),
        (b"x" * 101, "101 bytes; the limit is 100"),
        (12, "has type int"),
    ],
)
def test_decode_errors_name_the_row(raw, message):
    with pytest.raises(InputError, match=message) as err:
        decode_texts([b"fine", raw], max_text_bytes=100)
    assert "row 1" in str(err.value)


def test_bucket_lengths():
    assert [bucket_length(n, max_length=64) for n in (1, 8, 9, 33, 200)] == [8, 8, 16, 64, 64]


def test_long_text_is_truncated_to_max_length(encoder):
    out = encoder(["word " * 20_000])
    assert out["input_ids"].shape == (1, 32)
    assert out["attention_mask"].sum() == 32


def test_padding_and_masks(encoder):
    out = encoder(["short", "a somewhat longer sentence with more tokens"])
    assert out["input_ids"].shape == out["attention_mask"].shape == out["token_type_ids"].shape
    assert out["input_ids"].dtype == np.int64
    assert out["attention_mask"][0].sum() < out["attention_mask"][1].sum()


def test_control_characters_are_accepted(encoder):
    texts = decode_texts(["bell\x07 and\x1b escape"], max_text_bytes=100)
    assert encoder(texts)["input_ids"].shape[0] == 1


def test_common_tokens_file_is_written_and_left_out_of_the_sketch(tmp_path):
    import shutil

    from veil.python_backend.fingerprint import EMPTY, MINHASH_SIZE
    from veil.python_backend.tokens import COMMON_TOKENS_FILE, write_common_tokens

    tok = tmp_path / "tok"
    shutil.copytree(packaged_minilm(), tok)
    names = ["input_ids", "attention_mask"]
    before = TextEncoder(tok, input_names=names, max_length=32)(["the cat"])["fingerprint"]
    common = write_common_tokens(tok, ["the cat sat", "the dog ran", "the end"], max_length=32)
    assert (tok / COMMON_TOKENS_FILE).exists() and len(common) == 6  # every token of three short texts
    after = TextEncoder(tok, input_names=names, max_length=32)(["the cat"])["fingerprint"]
    assert (before[0, :MINHASH_SIZE] == after[0, :MINHASH_SIZE]).all()  # MinHash: every token
    assert (before[0, MINHASH_SIZE:] != EMPTY).sum() == 2 and (after[0, MINHASH_SIZE:] == EMPTY).all()
