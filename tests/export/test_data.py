from __future__ import annotations

import json

import numpy as np
import pytest

from veil.export.data import SPLIT_NAMES, Splits, TextDataset, dedupe, load_dataset, load_file, make_splits


def test_tsv_with_header_and_int_labels(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("sentence\tlabel\nhello there \t1\nbye\t0\n")
    ds = load_file(p)
    assert ds.texts == ["hello there", "bye"] and ds.labels.tolist() == [1, 0]
    assert ds.label_names == ["0", "1"]


def test_tsv_without_header_and_named_labels(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("a story\tSports\nanother\tWorld\n")
    ds = load_file(p, label_names=["World", "Sports"])
    assert ds.labels.tolist() == [1, 0]


def test_csv_and_jsonl(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"hello, world",pos\nbad,neg\n')
    ds = load_file(tmp_path / "d.csv")
    assert ds.texts[0] == "hello, world" and ds.label_names == ["neg", "pos"]
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "x", "label": 1}) + "\n" + json.dumps({"text": "y", "label": 0})
    )
    assert load_file(tmp_path / "d.jsonl").labels.tolist() == [1, 0]


def test_unknown_label_is_an_error(tmp_path):
    (tmp_path / "d.tsv").write_text("x\tNope\n")
    with pytest.raises(ValueError, match="'Nope' is not one of"):
        load_file(tmp_path / "d.tsv", label_names=["a", "b"])


def test_builtin_needs_a_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VEIL_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_dataset("sst2")


def test_dedupe_drops_repeats_and_conflicts():
    ds = TextDataset(["A b", "a  B", "c", "c", "d", "e"], np.array([1, 1, 0, 1, 0, 1]), ["0", "1"])
    out = dedupe(ds, exclude=["E"])
    assert out.texts == ["A b", "d"]


def test_splits_are_disjoint_seeded_and_saved(tmp_path):
    ds = TextDataset([f"t{i}" for i in range(100)], np.arange(100) % 2, ["0", "1"])
    sizes = dict(zip(SPLIT_NAMES, [10, 10, 20, 20, 30], strict=True))
    a = make_splits(ds, sizes=sizes, seed=3)
    b = make_splits(ds, sizes=sizes, seed=3)
    c = make_splits(ds, sizes=sizes, seed=4)
    assert a.indices == b.indices and a.indices != c.indices
    flat = [i for v in a.indices.values() for i in v]
    assert len(flat) == len(set(flat)) == 90
    a.save(tmp_path / "s.json")
    again = Splits.load(tmp_path / "s.json")
    assert again.indices == a.indices and again.source_sha256 == a.source_sha256
    assert len(again.take(ds, "members")) == 20


def test_splits_refuse_too_many_rows():
    ds = TextDataset(["a", "b"], np.array([0, 1]), ["0", "1"])
    with pytest.raises(ValueError, match="need 5 rows"):
        make_splits(ds, sizes=dict.fromkeys(SPLIT_NAMES, 1), seed=0)
