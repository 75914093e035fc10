"""Per-round times of the benchmark's runners, recorded as each run goes (one module, so
that runners imported on demand record into the same list), and the clock they read."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

# Steady-state seconds of each round after the first: from the end of one round to the end
# of the next, so that start-up and the final evaluation are not in it, and whatever a
# runner does between rounds (a fedbatch engine's callbacks) is.
ROUND_SECONDS: list[float] = []

_clock: Callable[[], float] = time.perf_counter


def now() -> float:
    """The runners' clock: wall seconds, or this process's CPU seconds after
    `use_cpu_clock` (which do not count waiting for cores that other jobs hold)."""
    return _clock()


def use_cpu_clock() -> None:
    global _clock
    _clock = time.process_time


def record_round_ends(ends: list[float]) -> None:
    """Add the intervals between consecutive round-end times (`now()` seconds)."""
    ROUND_SECONDS.extend(later - earlier for earlier, later in itertools.pairwise(ends))
