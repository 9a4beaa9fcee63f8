"""The probe's paddings: seeded, the whole text kept, as many words added."""

from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy.probe_crops import pads

WORDS = st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=30)


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
