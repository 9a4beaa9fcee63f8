"""The crops of the gate-evading probe: seeded, in order, the stated share of words."""

from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy.probe_crops import crops, pads

WORDS = st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=30)


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


@settings(max_examples=60, deadline=None)
@given(words=WORDS)
def test_paddings_keep_the_whole_text_and_add_as_many_words(words):
    text = " ".join(words)
    filler = ["zz", "yy", "xx"]
    out = pads(text, 6, filler)
    assert out == pads(text, 6, filler)
    for j, p in enumerate(out):
        got = p.split()
        assert len(got) == 2 * len(words)
        kept = got[: len(words)] if j % 2 == 0 else got[len(words) :]
        extra = got[len(words) :] if j % 2 == 0 else got[: len(words)]
        assert kept == words and set(extra) <= set(filler)
