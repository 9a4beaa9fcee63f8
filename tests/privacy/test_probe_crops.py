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


def test_scored_reports_accuracy_tpr_and_the_strongest_interval():
    """Members' crops sharper than non-members': raw outputs beat label-only on accuracy and on TPR
    at 1% FPR, each output's strongest attack sits inside its own interval."""
    import numpy as np

    from veil.privacy.baselines import label_only
    from veil.privacy.probe_crops import Probe, scored

    rng = np.random.default_rng(0)
    n, k = 400, 4
    member = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    labels = rng.integers(0, 2, n)
    margin = np.repeat(np.where(member, 4.0, 1.0), k) + rng.normal(0, 1, n * k)
    z = np.zeros((n * k, 2))
    z[np.arange(n * k), np.repeat(labels, k)] = margin
    raw = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    probe = Probe.__new__(Probe)
    probe.labels, probe.member, probe.seed = labels, member, 3
    row, tpr, strongest, chosen = scored(probe, {"raw": raw, "label_only": label_only(raw)}, k)
    assert set(row["raw"]) == set(tpr["raw"]) and len(row["raw"]) >= 3
    assert max(row["raw"].values()) > max(row["label_only"].values()) + 10
    assert max(tpr["raw"].values()) > max(tpr["label_only"].values())
    # the attack chosen on the other half of each halving still reads raw above label-only
    assert chosen["raw"]["accuracy"] > chosen["label_only"]["accuracy"] + 10
    assert chosen["raw"]["tpr_1"] > chosen["label_only"]["tpr_1"]
    for name in row:
        lo, hi = strongest[name]["accuracy_ci"]
        assert lo <= row[name][strongest[name]["attack"]] <= hi
        assert strongest[name]["attack"] in row[name]
        lo, hi = strongest[name]["tpr_1_ci"]
        assert lo <= tpr[name][strongest[name]["tpr_attack"]] <= hi
        assert tpr[name][strongest[name]["tpr_attack"]] == max(tpr[name].values())
