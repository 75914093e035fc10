"""Buffers and round planning on a client's stream (numpy only).

`plan_stream_round` turns a window [t0, t1) of virtual time into batches of arrival ordinals
(compute takes no virtual time yet). Online replays come from the buffer as it was before
the round, restricted to arrivals already trained on; a `wait` round without a single
step counts its whole window as waiting; a `window`/`reservoir` smaller than B waits for
a full buffer only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedbatch.config.stream import StreamConfig
from fedbatch.data.arrivals import BLOCK
from fedbatch.seeding import derive_seed

if TYPE_CHECKING:
    from fedbatch.data.stream import ClientStream

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


def plan_stream_round(
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
