"""Crops: seeded, in order, the stated share of words; the defender's apart from the probe's attacker's."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.export.crops import DEFENDER_CROPS, crops, defender_crops

words = st.text(alphabet="abcdefgh", min_size=1, max_size=6)
WORDS = st.lists(words, min_size=1, max_size=30)


def is_subsequence(crop: str, text: str) -> bool:
    it = iter(text.split())
    return all(w in it for w in crop.split())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(words, min_size=1, max_size=30).map(" ".join), min_size=1, max_size=12), st.integers(1, 20))
def test_defender_crops_are_seeded_subsequences_of_a_sample(texts, limit):
    flat, of = defender_crops(texts, seed=3, limit=limit)
    assert len(flat) == len(of) == DEFENDER_CROPS * min(len(texts), limit)
    assert len(set(of.tolist())) == min(len(texts), limit) and (np.diff(of) >= 0).all()
    assert all(c and is_subsequence(c, texts[i]) for c, i in zip(flat, of, strict=True))
    again, of_again = defender_crops(texts, seed=3, limit=limit)
    assert again == flat and (of_again == of).all()


def test_defender_and_attacker_crops_differ():
    """The probe's attacker draws its crops without the defender's salt: on long texts they differ."""
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.permutation(40)[:20]) for _ in range(50)]
    flat, _ = defender_crops(texts, seed=0)
    attacker = [crops(t, 1, 0.3, "subset")[0] for t in texts]
    assert sum(a == d for a, d in zip(attacker, flat[::DEFENDER_CROPS], strict=True)) <= 1


@settings(max_examples=60, deadline=None)
@given(words=WORDS, keep=st.sampled_from([0.3, 0.5, 0.7]), kind=st.sampled_from(["subset", "window"]))
def test_crops_keep_an_ordered_share_of_the_words(words, keep, kind):
    text = " ".join(words)
    out = crops(text, 8, keep, kind)
    assert out == crops(text, 8, keep, kind)  # seeded by the text: repeatable
    m = max(1, round(keep * len(words)))
    for c in out:
        kept = c.split()
        assert len(kept) == m
        it = iter(words)  # a subsequence of the text, in its order
        assert all(w in it for w in kept)
        if kind == "window":
            assert any(words[s : s + m] == kept for s in range(len(words) - m + 1))
