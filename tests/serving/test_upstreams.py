"""The replica pool's rotation and the launcher's reading of a degraded defense (no servers needed;
tests/integration/test_shared_state.py runs both against real tritonservers and Redis)."""

from __future__ import annotations

import pytest

from veil.serving.launcher import degraded_instances
from veil.serving.upstreams import UpstreamPool, parse_addresses


def test_addresses_pair_up_in_order():
    assert parse_addresses("a:1, b:1", "a:2,b:2") == [("a:1", "a:2"), ("b:1", "b:2")]
    for http, grpc in (("a:1,b:1", "a:2"), ("", "")):
        with pytest.raises(ValueError, match="same replicas in order"):
            parse_addresses(http, grpc)


def test_rotation_skips_unhealthy_replicas_and_falls_back_to_all():
    pool = UpstreamPool(parse_addresses("a:1,b:1,c:1", "a:2,b:2,c:2"))
    a, b, c = pool.replicas
    assert {pool.pick().http for _ in range(6)} == {"a:1", "b:1", "c:1"}
    pool.mark_down(b, "probe failed")
    assert {pool.pick().http for _ in range(6)} == {"a:1", "c:1"}
    assert pool.pick(exclude=[a]) is c and pool.problem() is None
    pool.mark_down(a, "gone")
    pool.mark_down(c, "gone")
    assert pool.pick() in pool.replicas  # none healthy: the request meets the real error
    assert pool.pick(exclude=[a, b, c]) is None
    assert "no upstream replica is ready" in pool.problem() and "b:1: probe failed" in pool.problem()


def test_degraded_instances_are_read_from_the_metrics():
    healthy = 'veil_state_degraded{instance="mia_defense_0_0",model="mia_defense",variant="veil"} 0\n'
    assert degraded_instances(healthy) is None
    down = healthy + 'veil_state_degraded{instance="mia_defense_0_1",model="mia_defense",variant="veil"} 1\n'
    assert degraded_instances(down) == "adaptive state store unreachable in mia_defense_0_1: outputs served at threat 1"
