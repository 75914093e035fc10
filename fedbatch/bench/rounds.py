"""Per-round times of the benchmark's runners, recorded as each run goes (one module, so
that runners imported on demand record into the same list)."""

from __future__ import annotations

import itertools

# Steady-state seconds of each round after the first: from the end of one round to the end
# of the next, so that start-up and the final evaluation are not in it, and whatever a
# runner does between rounds (a fedbatch engine's metrics row) is.
ROUND_SECONDS: list[float] = []


def record_round_ends(ends: list[float]) -> None:
    """Add the intervals between consecutive round-end times (perf_counter seconds)."""
    ROUND_SECONDS.extend(later - earlier for earlier, later in itertools.pairwise(ends))
