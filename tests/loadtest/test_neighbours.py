"""The neighbours probe's comparison (the probe itself needs a served build: loadtest/neighbours.py)."""

from __future__ import annotations

import numpy as np

from veil.loadtest.neighbours import compare


def test_one_ulp_anywhere_in_a_row_counts_and_members_are_told_apart():
    rng = np.random.default_rng(0)
    alone = rng.dirichlet(np.ones(4), size=10).astype(np.float32)
    other = alone.copy()
    other[2, 1] = np.nextafter(other[2, 1], np.float32(1))  # a member's row, one ulp up
    other[7, 3] = np.nextafter(other[7, 3], np.float32(0))  # a non-member's row, one ulp down
    member = np.arange(10) < 5
    out = compare({"alone": alone, "again": alone.copy(), "beside": other}, member)
    assert out["alone"] == out["again"] == {"texts": 10, "differ": 0, "members": 0}
    assert out["beside"] == {"texts": 10, "differ": 2, "members": 1}
