"""Arrival processes over virtual time (numpy only): when a client's samples arrive.

Constant arrivals are evenly spaced; Poisson and bursty arrivals are drawn per 1-second
slot: slot counts by blocks of `BLOCK` slots (a few cached), times inside a slot from a
counter-based hash, so counts and times cost O(answer) and memory stays bounded.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from fedbatch.config.stream import StreamConfig
from fedbatch.seeding import derive_seed

BLOCK = 4096  # slots per block of Poisson counts; ordinals per reservoir block
CACHED_BLOCKS = 8  # blocks of slot counts (and partition permutations) kept per client
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective scramble of uint64 values (wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_uniform(key: int, *ids: np.ndarray) -> np.ndarray:
    """One uniform in [0, 1) per element: a pure function of (key, ids[0][i], ids[1][i]...)."""
    x = np.full(np.shape(ids[0]), key, dtype=np.uint64).reshape(-1)
    for part in ids:
        x = _mix(x + np.asarray(part, dtype=np.int64).reshape(-1).astype(np.uint64) * _GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


class _Shape:
    """Λ(t) = ∫₀ᵗ g: the mean-1 rate profile of poisson (g = 1) and bursty streams."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.kind = "flat" if cfg.name == "poisson" else cfg.pattern
        self.period, self.duty = cfg.period, cfg.duty

    def cum(self, t: np.ndarray) -> np.ndarray:
        p = self.period
        if self.kind == "onoff":
            k = np.floor(t / p)
            return k * p + np.minimum(t - k * p, self.duty * p) / self.duty
        if self.kind == "diurnal":
            return t + p / (2 * math.pi) * (1 - np.cos(2 * math.pi * t / p))
        return t

    def inverse(self, level: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """The t in slot [lo, lo + 1) with Λ(t) = level."""
        if self.kind == "onoff":
            k = np.floor(level / self.period)
            t = k * self.period + (level - k * self.period) * self.duty
        elif self.kind == "diurnal":
            a, b = lo.copy(), lo + 1.0
            for _ in range(54):  # bisection: Λ is increasing
                mid = 0.5 * (a + b)
                below = self.cum(mid) < level
                a, b = np.where(below, mid, a), np.where(below, b, mid)
            t = a
        else:
            t = level
        return np.clip(t, lo, np.nextafter(lo + 1.0, lo))


class SlotArrivals:
    """Inhomogeneous Poisson arrivals at `rate`·g(t), drawn per 1-second slot."""

    def __init__(self, cfg: StreamConfig, rate: float, seed: int, client: int) -> None:
        self.shape, self.rate, self.seed, self.client = _Shape(cfg), rate, seed, client
        self.time_key = derive_seed(seed, "arrival-times", client)
        self.starts = [0]  # arrivals before block b, for the blocks drawn so far
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def block(self, b: int) -> np.ndarray:
        """Cumulative counts of block b's slots (length BLOCK + 1, from 0)."""
        if b in self.cache:
            self.cache.move_to_end(b)
            return self.cache[b]
        edges = np.arange(b * BLOCK, (b + 1) * BLOCK + 1, dtype=np.float64)
        means = np.maximum(self.rate * np.diff(self.shape.cum(edges)), 0.0)
        rng = np.random.default_rng(derive_seed(self.seed, "arrivals", self.client, b))
        cum = np.zeros(BLOCK + 1, dtype=np.int64)
        np.cumsum(rng.poisson(means), out=cum[1:])
        self.cache[b] = cum
        if len(self.cache) > CACHED_BLOCKS:
            self.cache.popitem(last=False)
        return cum

    def start(self, b: int) -> int:
        while len(self.starts) <= b:
            self.starts.append(self.starts[-1] + int(self.block(len(self.starts) - 1)[-1]))
        return self.starts[b]

    def slot_times(self, slots: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Sorted arrival times of whole slots (ascending slot ids), concatenated."""
        lo = np.repeat(slots.astype(np.float64), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        u = hash_uniform(self.time_key, lo.astype(np.int64), np.arange(len(lo)) - first)
        a, b = self.shape.cum(lo), self.shape.cum(lo + 1.0)
        return np.sort(self.shape.inverse(a + u * (b - a), lo))

    def count(self, t: float) -> int:
        if t <= 0:
            return 0
        slot = math.floor(t)
        b, j = divmod(slot, BLOCK)
        base = self.start(b)
        cum = self.block(b)
        inside = int(cum[j + 1] - cum[j])
        times = self.slot_times(np.array([slot]), np.array([inside]))
        return base + int(cum[j]) + int(np.searchsorted(times, t, side="left"))

    def times_of(self, ordinals: np.ndarray) -> np.ndarray:
        out = np.empty(len(ordinals), dtype=np.float64)
        if len(ordinals) == 0:
            return out
        top = int(ordinals.max())
        while self.starts[-1] <= top:
            self.start(len(self.starts))
        starts = np.asarray(self.starts)
        blocks = np.searchsorted(starts, ordinals, side="right") - 1
        for b in np.unique(blocks):
            mask = blocks == b
            local = ordinals[mask] - starts[b]
            cum = self.block(int(b))
            slot = np.searchsorted(cum, local, side="right") - 1
            uniq, where = np.unique(slot, return_inverse=True)
            counts = cum[uniq + 1] - cum[uniq]
            times = self.slot_times(uniq + int(b) * BLOCK, counts)
            offsets = np.cumsum(counts) - counts
            out[mask] = times[offsets[where] + local - cum[slot]]
        return out


def constant_count(rate: float, t: float) -> int:
    """#{i ≥ 0 : (i + 1) / rate < t}, consistent with the float times."""
    if t <= 0:
        return 0
    k = max(0, math.ceil(t * rate) - 1)
    while (k + 1) / rate < t:
        k += 1
    while k > 0 and k / rate >= t:
        k -= 1
    return k
