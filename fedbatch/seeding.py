"""Every random stream derives from the run seed and the ids of what it is for."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for the stream named by `parts` (e.g. "shuffle", client id, round).

    Hashing the names keeps streams independent of each other and of the process or
    order in which they are drawn, so a client's result does not depend on who ran it.
    """
    text = "/".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def sample_clients(
    seed: int, server_round: int, population: int, count: int, phase: str = "train"
) -> list[int]:
    """`count` distinct client indices out of `population`, sorted; a pure function of
    the seed and the round, whatever the engine (`fedbatch.federated.sampling`)."""
    rng = np.random.default_rng(derive_seed(seed, "sample", server_round, phase))
    return sorted(int(i) for i in rng.choice(population, size=count, replace=False))
