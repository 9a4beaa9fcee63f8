"""The report's findings: one line a variant and mode, with every seed's count."""

from veil.privacy.report import UPPER, findings


def test_nondeterministic_rows_are_listed_once_per_mode_with_every_seed():
    summary = {
        "veil": {
            "source": "served",
            "nondeterministic": [
                {"long_lived/full": 3, "long_lived/paced": 0},
                {"long_lived/full": 0, "long_lived/paced": 0},
                {"long_lived/full": 5, "long_lived/paced": 0},
            ],
            UPPER: {"excess": [0.0, 0.0, 0.0]},
        }
    }
    lines = [line for line in findings(summary) if "repeated queries" in line]
    assert len(lines) == 1
    assert "(long_lived/full)" in lines[0] and lines[0].endswith(": 3 / 0 / 5.")
