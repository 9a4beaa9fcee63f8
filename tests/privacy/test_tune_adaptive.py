"""The ramp tuner's level count is the served one: ``SelectiveTables.bin_count`` of the adaptive level."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.privacy.tune_adaptive import COARSE_LEVELS, FLOOR, GRID, PREVIOUS, levels
from veil.python_backend.selective import SelectiveTables


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_levels_are_the_served_bin_counts(threats):
    empty = [[[], []], [[], []]]
    tables = SelectiveTables(
        num_classes=2,
        member_q=empty,
        nonmember_q=empty,
        nonmember_sorted=[[], []],
        nonmember_correct=[[], []],
        tail_profile=[1.0],
        coarse_levels=COARSE_LEVELS,
        intensity_floor=FLOOR,
    )
    t = np.asarray(threats)
    np.testing.assert_array_equal(levels(t), tables.bin_count(tables.level(t, adaptive=True)))


def test_the_grid_holds_the_previous_ramp_and_the_default():
    from veil.python_backend.adaptive import AdaptiveConfig
    from veil.python_backend.calibrate import CalibrationConfig

    cfg = AdaptiveConfig()
    share = CalibrationConfig().tracker_common_share
    assert PREVIOUS in GRID and (cfg.fingerprints, share, (cfg.duplicate_low, cfg.duplicate_high)) in GRID
