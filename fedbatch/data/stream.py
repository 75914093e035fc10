"""Streaming partitions: arrivals over virtual time, sample order, drift, buffers, rounds.

A client's arrivals are numbered 0, 1, 2, ... (ordinals). Everything here is a pure
function of (seed, client, ...) through `derive_seed`, so queries may come in any order
and from any process. Poisson and bursty arrivals are drawn per 1-second slot: slot
counts by blocks of `BLOCK` slots (a few cached), times inside a slot from a counter-based
hash, so `count(t)` and `times(a, b)` cost O(answer) and memory stays bounded.

`plan_round` turns a window [t0, t1) of virtual time into batches of arrival ordinals
(compute takes no virtual time yet). Online replays come from the buffer as it was before
the round, restricted to arrivals already trained on; a `wait` round without a single
step counts its whole window as waiting; a `window`/`reservoir` smaller than B waits for
a full buffer only.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedbatch.config.stream import StreamConfig
from fedbatch.seeding import derive_seed

BLOCK = 4096  # slots per block of Poisson counts; ordinals per reservoir block
_CACHED = 8  # blocks of slot counts (and partition permutations) kept per client
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


class _SlotArrivals:
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
        if len(self.cache) > _CACHED:
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


def _constant_count(rate: float, t: float) -> int:
    """#{i ≥ 0 : (i + 1) / rate < t}, consistent with the float times."""
    if t <= 0:
        return 0
    k = max(0, math.ceil(t * rate) - 1)
    while (k + 1) / rate < t:
        k += 1
    while k > 0 and k / rate >= t:
        k -= 1
    return k


class ClientStream:
    """One client's stream over virtual time (seconds from 0)."""

    def __init__(
        self, cfg: StreamConfig, seed: int, client: int, labels: np.ndarray, num_classes: int
    ) -> None:
        self.cfg, self.seed, self.client = cfg, seed, client
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n, self.num_classes = len(self.labels), num_classes
        if self.n == 0:
            raise ValueError(f"client {client} has an empty partition")
        z = np.random.default_rng(derive_seed(seed, "stream-rate", client)).standard_normal()
        sigma = cfg.rate_spread
        self.rate = float(cfg.rate * math.exp(sigma * z - sigma * sigma / 2))
        self.onset = self._onset()
        slotted = cfg.name in ("poisson", "bursty")
        self._slots = _SlotArrivals(cfg, self.rate, seed, client) if slotted else None
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self._label_cdf: np.ndarray | None = None

    def _onset(self) -> float:
        cfg = self.cfg
        if cfg.drift == "none" or cfg.drift_at is None:
            return math.inf
        rng = np.random.default_rng(derive_seed(self.seed, "drift-onset", self.client))
        return float(cfg.drift_at + rng.uniform(0.0, cfg.drift_stagger))

    # --- arrivals ---------------------------------------------------------------------------

    def count(self, t: float) -> int:
        """A(t): arrivals with time < t (static: the whole partition for any t ≥ 0)."""
        if self.cfg.name == "static":
            return self.n if t >= 0 else 0
        if self._slots is None:
            return _constant_count(self.rate, t)
        return self._slots.count(t)

    def times(self, start: int, stop: int) -> np.ndarray:
        """Arrival times (float64) of ordinals [start, stop)."""
        return self.times_of(np.arange(start, max(start, stop), dtype=np.int64))

    def times_of(self, ordinals: np.ndarray) -> np.ndarray:
        """Arrival times of any ordinals."""
        o = np.asarray(ordinals, dtype=np.int64).reshape(-1)
        if self.cfg.name == "static":
            return np.zeros(len(o))
        if self._slots is None:
            return (o.astype(np.float64) + 1.0) / self.rate
        return self._slots.times_of(o)

    # --- samples ----------------------------------------------------------------------------

    def _perm(self, cycle: int) -> np.ndarray:
        if cycle not in self._perms:
            key = derive_seed(self.seed, "stream-order", self.client, cycle)
            self._perms[cycle] = np.random.default_rng(key).permutation(self.n)
            if len(self._perms) > 2:
                self._perms.popitem(last=False)
        return self._perms[cycle]

    def samples(self, ordinals: np.ndarray) -> np.ndarray:
        """Partition-local sample index (0..n-1) of each arrival."""
        o = np.asarray(ordinals, dtype=np.int64).reshape(-1)
        out = np.empty_like(o)
        cycles, rest = np.divmod(o, self.n)
        for cycle in np.unique(cycles):
            mask = cycles == cycle
            out[mask] = self._perm(int(cycle))[rest[mask]]
        if self.cfg.drift == "label":
            drifted = self.concepts(o) == 1
            out[drifted] = self._label_draws(o[drifted])
        return out

    def label_prior(self) -> np.ndarray:
        """The post-drift class prior q (Dirichlet draw restricted to the partition's classes)."""
        rng = np.random.default_rng(derive_seed(self.seed, "label-drift", self.client))
        q = np.nan_to_num(rng.dirichlet(np.full(self.num_classes, self.cfg.label_alpha)))
        present = np.bincount(self.labels, minlength=self.num_classes) > 0
        q = np.where(present, q, 0.0)
        return q / q.sum() if q.sum() > 0 else present / present.sum()

    def _label_draws(self, ordinals: np.ndarray) -> np.ndarray:
        """Samples drawn with weight q[label] / p[label], one hash uniform per ordinal."""
        if self._label_cdf is None:
            p = np.bincount(self.labels, minlength=self.num_classes) / self.n
            self._label_cdf = np.cumsum(self.label_prior()[self.labels] / p[self.labels])
        cdf = self._label_cdf
        u = hash_uniform(derive_seed(self.seed, "label-draw", self.client), ordinals)
        return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), self.n - 1)

    # --- drift ------------------------------------------------------------------------------

    def concept_at(self, t: float) -> float:
        """Fraction of this client's arrivals at time t that follow concept 1."""
        if t < self.onset:
            return 0.0
        mode, window = self.cfg.drift_mode, self.cfg.drift_window
        if mode == "gradual":
            return float(min(1.0, (t - self.onset) / window))
        if mode == "recurrent":
            return float(math.floor((t - self.onset) / window) % 2 == 0)
        return 1.0

    def concepts(self, ordinals: np.ndarray) -> np.ndarray:
        """int8 concept of each arrival (0 before drift, 1 after), from its arrival time."""
        o = np.asarray(ordinals, dtype=np.int64).reshape(-1)
        if math.isinf(self.onset) or len(o) == 0:
            return np.zeros(len(o), dtype=np.int8)
        after = self.times_of(o) - self.onset
        mode, window = self.cfg.drift_mode, self.cfg.drift_window
        if mode == "gradual":
            u = hash_uniform(derive_seed(self.seed, "drift", self.client), o)
            hit = u < np.clip(after / window, 0.0, 1.0)
        elif mode == "recurrent":
            hit = (after >= 0) & (np.floor(np.maximum(after, 0.0) / window) % 2 == 0)
        else:
            hit = after >= 0
        return hit.astype(np.int8)


# --- buffers ----------------------------------------------------------------------------------


@dataclass(eq=False)
class StreamState:
    """What persists between a client's rounds; O(capacity) memory."""

    consumed: int = 0  # online: arrivals already trained on (the next new one is `consumed`)
    offered: int = 0  # arrivals already offered to the buffer
    buffer: np.ndarray | None = None  # ordinals held; None: all of range(offered)

    def held(self) -> np.ndarray:
        """The ordinals in the buffer (materialises range(offered) for buffer=all)."""
        if self.buffer is None:
            return np.arange(self.offered, dtype=np.int64)
        return self.buffer

    def to_arrays(self) -> dict[str, Any]:
        """ints and a small int64 array (no `buffer` key for buffer=all)."""
        out: dict[str, Any] = {"consumed": self.consumed, "offered": self.offered}
        if self.buffer is not None:
            out["buffer"] = np.asarray(self.buffer, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, values: Mapping[str, Any]) -> StreamState:
        buffer = values.get("buffer")
        return cls(
            consumed=int(np.asarray(values["consumed"]).item()),
            offered=int(np.asarray(values["offered"]).item()),
            buffer=None if buffer is None else np.asarray(buffer, dtype=np.int64).copy(),
        )


def offer(cfg: StreamConfig, state: StreamState, upto: int, seed: int, client: int) -> StreamState:
    """Offer arrivals [state.offered, upto) to the buffer, in order; a new state."""
    upto = max(upto, state.offered)
    if cfg.buffer == "all":
        buffer = None
    elif cfg.buffer == "window":
        buffer = np.arange(max(0, upto - cfg.capacity), upto, dtype=np.int64)
    else:
        buffer = _reservoir(cfg.capacity, state, upto, seed, client)
    return StreamState(state.consumed, upto, buffer)


def _reservoir(capacity: int, state: StreamState, upto: int, seed: int, client: int) -> np.ndarray:
    """Algorithm R over arrivals [state.offered, upto), one seeded draw per ordinal."""
    buffer = np.empty(0, np.int64) if state.buffer is None else state.buffer.copy()
    k = state.offered
    fill = min(upto, capacity)
    if k < fill:
        buffer = np.concatenate([buffer, np.arange(k, fill, dtype=np.int64)])
        k = fill
    while k < upto:
        b = k // BLOCK
        stop = min(upto, (b + 1) * BLOCK)
        rng = np.random.default_rng(derive_seed(seed, "reservoir", client, b))
        ordinals = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.int64)
        slot = rng.integers(0, ordinals + 1)[k - b * BLOCK : stop - b * BLOCK]
        ordinals = ordinals[k - b * BLOCK : stop - b * BLOCK]
        keep = slot < capacity
        # The last arrival drawn for a slot wins.
        slot, ordinals = slot[keep][::-1], ordinals[keep][::-1]
        _, last = np.unique(slot, return_index=True)
        buffer[slot[last]] = ordinals[last]
        k = stop
    return buffer


# --- rounds -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StreamRound:
    """One client's round on its stream: the batches to train on and what it cost."""

    steps: list[np.ndarray]  # per step: arrival ordinals of the batch, new (first use) first
    fresh: list[int]  # per step: how many leading ordinals are new (prequential metrics)
    samples_arrived: int  # arrivals with time in [t0, t1)
    samples_trained: int  # sum of batch sizes
    wait_seconds: float
    state: StreamState  # after the round

    @property
    def held(self) -> int:
        """Samples in the buffer after the round."""
        return self.state.offered if self.state.buffer is None else len(self.state.buffer)


def plan_round(
    stream: ClientStream,
    state: StreamState,
    t0: float,
    t1: float,
    batch_size: int,
    *,
    cfg: StreamConfig,
    epochs: int,
    max_steps: int | None,
    seed: int,
    client: int,
    server_round: int,
) -> StreamRound:
    """Plan the batches of the virtual-time window [t0, t1); compute takes no virtual time."""
    arrived = stream.count(t1)
    before = 0 if cfg.name == "static" and t0 <= 0 else stream.count(t0)
    after = offer(cfg, state, arrived, seed, client)
    if cfg.passes == 1:
        rng = np.random.default_rng(derive_seed(seed, "replay", client, server_round))
        steps, fresh, wait, used = _online(
            stream, state, arrived, t0, t1, batch_size, cfg, max_steps, rng
        )
        after = StreamState(state.consumed + used, after.offered, after.buffer)
    else:
        rng = np.random.default_rng(derive_seed(seed, "shuffle", client, server_round))
        steps, fresh, wait = _replay(
            stream, state, after, t0, t1, batch_size, cfg, epochs, max_steps, rng
        )
    return StreamRound(
        steps=steps,
        fresh=fresh,
        samples_arrived=max(0, arrived - before),
        samples_trained=sum(len(s) for s in steps),
        wait_seconds=float(wait),
        state=after,
    )


def _online(
    stream: ClientStream,
    state: StreamState,
    arrived: int,
    t0: float,
    t1: float,
    batch_size: int,
    cfg: StreamConfig,
    max_steps: int | None,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[int], float, int]:
    """Single pass: each step takes its new arrivals in order plus replays from the buffer."""
    n_new = max(1, round((1 - cfg.replay_ratio) * batch_size))
    pending = arrived - state.consumed
    full, part = divmod(max(pending, 0), n_new)
    sizes = [n_new] * full + ([part] if part and cfg.batching == "available" else [])
    sizes = sizes[:max_steps] if max_steps is not None else sizes
    ends = state.consumed + np.cumsum(sizes, dtype=np.int64)
    wait = 0.0
    if cfg.batching == "wait" and sizes:
        # Each step starts when its last new sample is in; the waits telescope.
        wait = max(0.0, float(stream.times_of(ends[-1:] - 1)[0]) - t0)
    elif cfg.batching == "wait" and full == 0:
        wait = t1 - t0  # B new samples never came: the whole window was spent waiting
    pool = _replay_pool(state)
    steps = []
    for size, end in zip(sizes, ends, strict=True):
        new = np.arange(end - size, end, dtype=np.int64)
        steps.append(np.concatenate([new, _draw(pool, batch_size - n_new, rng)]))
    return steps, list(sizes), wait, int(sum(sizes))


def _replay_pool(state: StreamState) -> np.ndarray | int:
    """Buffer before this round's arrivals, already trained on (an int n: range(n))."""
    if state.buffer is None:
        return min(state.offered, state.consumed)
    return state.buffer[state.buffer < state.consumed]


def _draw(pool: np.ndarray | int, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` uniform picks from the pool: without replacement when it is large enough."""
    n = pool if isinstance(pool, int) else len(pool)
    if size <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    picks = rng.choice(n, size=size, replace=size > n)
    return picks.astype(np.int64) if isinstance(pool, int) else pool[picks]


def _replay(
    stream: ClientStream,
    state: StreamState,
    after: StreamState,
    t0: float,
    t1: float,
    batch_size: int,
    cfg: StreamConfig,
    epochs: int,
    max_steps: int | None,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[int], float]:
    """Epochs (or `max_steps` steps) of shuffled batches over the buffer at t1."""
    held = after.held()
    wait = 0.0
    if cfg.batching == "wait":
        need = batch_size if cfg.buffer == "all" else min(batch_size, cfg.capacity)
        if after.offered < need:
            return [], [], t1 - t0
        if stream.count(t0) < need:  # the buffer held fewer than `need` at t0
            wait = max(0.0, float(stream.times(need - 1, need)[0]) - t0)
    if len(held) == 0:
        return [], [], wait
    steps: list[np.ndarray] = []
    fresh: list[int] = []
    for epoch, batch in _batches(len(held), min(batch_size, len(held)), epochs, max_steps, rng):
        ordinals = held[batch]
        new = ordinals >= state.offered if epoch == 0 else np.zeros(len(batch), dtype=bool)
        steps.append(np.concatenate([ordinals[new], ordinals[~new]]))
        fresh.append(int(new.sum()))
    return steps, fresh, wait


def _batches(
    n: int, size: int, epochs: int, max_steps: int | None, rng: np.random.Generator
) -> list[tuple[int, np.ndarray]]:
    """(epoch, positions) per step: `epochs` shuffled epochs, or exactly `max_steps` steps."""
    out: list[tuple[int, np.ndarray]] = []
    epoch = 0
    while (epoch < epochs) if max_steps is None else (len(out) < max_steps):
        order = rng.permutation(n)
        out += [(epoch, order[i : i + size]) for i in range(0, n, size)]
        epoch += 1
    return out if max_steps is None else out[:max_steps]
