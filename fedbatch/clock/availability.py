"""Client availability over virtual time: random dropouts, diurnal on/off, mid-round crashes.

Every draw is a pure function of (seed, round, client), so a client's availability does
not depend on which engine or process asks.
"""

from __future__ import annotations

import math

import numpy as np

from fedbatch.seeding import derive_seed


def _uniform(seed: int, *key: object) -> float:
    return float(np.random.default_rng(derive_seed(seed, *key)).random())


def online_probability(t: float, client_phase: float, day_seconds: float, night: float) -> float:
    """Diurnal trace: a client is off for the `night` fraction of each day, starting at its
    own phase (a fraction of the day); 1 outside its night."""
    if night <= 0:
        return 1.0
    position = (t / day_seconds + client_phase) % 1.0
    return 0.0 if position < night else 1.0


def client_phase(seed: int, client: int) -> float:
    """Where in the day a client's night starts (time zones differ)."""
    return _uniform(seed, "phase", client)


def is_available(
    seed: int,
    server_round: int,
    client: int,
    t: float,
    *,
    dropout: float,
    day_seconds: float,
    night: float,
) -> bool:
    """Whether a selected client takes part: online at time t and not randomly dropped."""
    if online_probability(t, client_phase(seed, client), day_seconds, night) == 0.0:
        return False
    return _uniform(seed, "dropout", server_round, client) >= dropout


def crash_point(seed: int, server_round: int, client: int, crash: float) -> float | None:
    """The fraction of its round's work after which a client crashes (None: it does not).

    A crashed client spent that fraction of its compute (and energy) and sends nothing."""
    if crash <= 0 or _uniform(seed, "crash", server_round, client) >= crash:
        return None
    fraction = _uniform(seed, "crash-point", server_round, client)
    return math.nextafter(fraction, 1.0) if fraction == 0.0 else fraction
