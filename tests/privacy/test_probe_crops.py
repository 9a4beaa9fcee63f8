"""The crops of the gate-evading probe: seeded, in order, the stated share of words."""

from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy.probe_crops import crops

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
