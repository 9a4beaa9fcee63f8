"""The crop probe's tables: each cell is the mean over seeds, then every seed in order."""

from veil.privacy.probe_table import OUTPUTS, tables


def run(excess: float, tpr: float) -> dict:
    outputs = {o: excess for o in (*OUTPUTS, "label_only")}
    strongest = {o: {"attack": "aug_hgb", "tpr_attack": "aug_hgb", "tpr_1_ci": [0.5, 2.5]} for o in outputs}
    return {
        "benign": {"adaptive_auroc": 0.78, "adaptive_ece": 0.03, "share_coarser_than_floor": 0.001},
        "edit": {
            "excess_over_label_only": outputs,
            "tpr_1_excess_over_label_only": {o: tpr for o in outputs},
            "tpr_1": {o: {"aug_hgb": 1.5} for o in outputs},
            "strongest": strongest,
            "selected_excess_over_label_only": {"accuracy": dict(outputs), "tpr_1": {o: tpr for o in outputs}},
        },
    }


def test_cells_are_the_mean_then_each_seed():
    text = tables([run(1.0, -0.5), run(2.0, 0.5)])
    edits = [line for line in text.splitlines() if line.startswith("| 6 word-level edits")]
    assert len(edits) == 5  # accuracy, TPR, both selected, intervals; kinds absent from every run left out
    assert edits[0].count("+1.5 (+1.0 / +2.0)") == len(OUTPUTS)
    assert edits[1].count("+0.0 (-0.5 / +0.5)") == len(OUTPUTS)
    assert edits[2].count("+1.5 (+1.0 / +2.0)") == edits[3].count("+0.0 (-0.5 / +0.5)") == len(OUTPUTS)
    assert "1.5 [0.5, 2.5] / 1.5 [0.5, 2.5]" in edits[4]
    assert "AUROC 0.780 / 0.780" in text and "crops" not in text
