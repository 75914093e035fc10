"""Client availability: dropout rates, diurnal nights and crash points, all seeded."""

from __future__ import annotations

import pytest

from fedbatch.clock.availability import (
    client_phase,
    crash_point,
    is_available,
    online_probability,
)


def test_dropout_rate_matches_the_probability_and_is_deterministic():
    draws = [
        is_available(0, r, c, 0.0, dropout=0.3, day_seconds=100.0, night=0.0)
        for r in range(1, 201)
        for c in range(50)
    ]
    assert sum(draws) / len(draws) == pytest.approx(0.7, abs=0.01)
    again = [
        is_available(0, r, c, 0.0, dropout=0.3, day_seconds=100.0, night=0.0)
        for r in range(1, 201)
        for c in range(50)
    ]
    assert draws == again
    assert all(
        is_available(0, 1, c, 0.0, dropout=0.0, day_seconds=1.0, night=0.0) for c in range(9)
    )


def test_a_client_is_offline_for_its_night_fraction_of_each_day():
    # Phase 0.25 of a 100 s day, night 0.5: offline while (t/100 + 0.25) mod 1 < 0.5.
    assert online_probability(0.0, 0.25, 100.0, 0.5) == 0.0
    assert online_probability(24.9, 0.25, 100.0, 0.5) == 0.0
    assert online_probability(25.0, 0.25, 100.0, 0.5) == 1.0
    assert online_probability(74.9, 0.25, 100.0, 0.5) == 1.0
    assert online_probability(75.0, 0.25, 100.0, 0.5) == 0.0
    assert online_probability(1234.0, 0.25, 100.0, 0.0) == 1.0
    times = [t * 0.5 for t in range(2000)]  # ten days at 100 s per day
    on = [online_probability(t, client_phase(3, 7), 100.0, 0.3) for t in times]
    assert sum(on) / len(on) == pytest.approx(0.7, abs=0.01)


def test_crashes_happen_at_their_rate_partway_through():
    points = [crash_point(1, r, c, 0.2) for r in range(1, 101) for c in range(40)]
    crashed = [p for p in points if p is not None]
    assert len(crashed) / len(points) == pytest.approx(0.2, abs=0.02)
    assert all(0.0 < p < 1.0 for p in crashed)
    assert crash_point(1, 1, 1, 0.0) is None
