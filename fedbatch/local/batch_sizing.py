"""Batch-size schedules: which B each round and each client trains with (pure, no Flower).

The server asks a `BatchPlanner` for the round's plan and sends it to the clients in their
ConfigRecords; each client then applies the per-client rule to its own data size. Each
schedule (`batch.name`) is a function `(cfg, ScheduleInput) -> B` named in
`fedbatch.registry.BATCH_SCHEDULES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedbatch.config import FULL_BATCH, BatchConfig
from fedbatch.registry import BATCH_SCHEDULES


@dataclass(frozen=True)
class NoiseEstimate:
    """Running estimates of the gradient's squared norm |G|² and noise trace tr(Σ)."""

    grad_sq: float
    trace: float

    @property
    def b_simple(self) -> float:
        """McCandlish et al.'s simple noise scale tr(Σ)/|G|² (nan when undefined)."""
        if not self.grad_sq > 0 or not math.isfinite(self.trace):
            return math.nan
        return max(self.trace, 0.0) / self.grad_sq


@dataclass(frozen=True)
class RoundPlan:
    batch_size: int | str  # the round's B before the per-client rule (`full`: whole data)
    lr_gain: float  # a fixed gain on the LR (1), unless `gain_noise` sets AdaScale's
    progress: float  # schedule progress in rounds at the round's start (AdaScale: Σ r)
    # AdaScale: the within-client noise estimate from which each client computes its gain
    # r at the effective batch it actually steps with (`plan.plan_client_round`)
    gain_noise: NoiseEstimate | None = None


@dataclass(frozen=True)
class ScheduleInput:
    """What a batch schedule may look at to choose the round's B (before bounds)."""

    base: int  # client.batch_size
    server_round: int  # from 1
    rounds: int
    previous: int  # the last round's B (base before round 1)
    noise: NoiseEstimate | None = None  # the latest estimate `batch.noise` names


def constant_batch(cfg: BatchConfig, at: ScheduleInput) -> int:
    return at.base


def step_batch(cfg: BatchConfig, at: ScheduleInput) -> int:
    """B × `factor` at each of the `milestones` rounds passed."""
    passed = sum(1 for m in cfg.milestones if m <= at.server_round)
    return round(at.base * cfg.factor**passed)


def ramp_batch(cfg: BatchConfig, at: ScheduleInput) -> int:
    """From B to `max` over `ramp_rounds` (default all rounds), linearly or geometrically."""
    if not isinstance(cfg.max, int):
        raise ValueError("a ramp needs an integer batch.max")
    length = cfg.ramp_rounds or at.rounds
    fraction = 1.0 if length <= 1 else min((at.server_round - 1) / (length - 1), 1.0)
    if cfg.ramp == "geometric":
        return round(at.base * (cfg.max / at.base) ** fraction)
    return round(at.base + fraction * (cfg.max - at.base))


def adaptive_batch(cfg: BatchConfig, at: ScheduleInput) -> int:
    return adaptive_batch_size(cfg, at.previous, at.noise)


def scheduled_batch_size(cfg: BatchConfig, base: int, server_round: int, rounds: int) -> int:
    """B of a deterministic schedule (constant, step, ramp) at `server_round` (from 1)."""
    at = ScheduleInput(base, server_round, rounds, previous=base)
    return BATCH_SCHEDULES.resolve(cfg.name)(cfg, at)


def adaptive_batch_size(cfg: BatchConfig, previous: int, noise: NoiseEstimate | None) -> int:
    """Grow B toward what the measured noise asks for, by at most `growth` per round.

    `simple`: target B_simple = tr(Σ)/|G|². `norm_test` (Byrd et al. 2012): grow while
    B < tr(Σ)/(θ²|G|²). B never shrinks; without an estimate it stays.
    """
    if noise is None or math.isnan(noise.b_simple):
        return previous
    target = noise.b_simple if cfg.rule == "simple" else noise.b_simple / cfg.theta**2
    return max(previous, min(math.ceil(target), math.ceil(previous * cfg.growth)))


def bounded(cfg: BatchConfig, batch_size: int) -> int:
    upper = cfg.max if isinstance(cfg.max, int) else batch_size
    return max(cfg.min, min(batch_size, upper))


class BatchPlanner:
    """The server's batch-size and AdaScale state across rounds.

    With AdaScale the round's plan carries the noise estimate; each client computes its
    gain r at its own effective batch, and the schedule moves on by the gain the clients
    reported (`advance`), 1 per round without AdaScale.
    """

    def __init__(self, cfg: BatchConfig, base: int | str, rounds: int) -> None:
        self.cfg, self.base, self.rounds = cfg, base, rounds
        self.progress = 0.0
        self.previous = base if isinstance(base, int) else None
        self.schedule = BATCH_SCHEDULES.resolve(cfg.name)

    def plan(
        self,
        server_round: int,
        noise: NoiseEstimate | None = None,
        gain_noise: NoiseEstimate | None = None,
    ) -> RoundPlan:
        """The round's plan. `noise`, the latest estimate `batch.noise` names, drives
        adaptive B; `gain_noise`, the within-client one (a client's steps draw from its own
        data), goes to the clients for AdaScale's gain."""
        if not isinstance(self.base, int):  # client.batch_size=full: nothing to schedule
            return RoundPlan(FULL_BATCH, 1.0, self.progress)
        assert self.previous is not None
        at = ScheduleInput(self.base, server_round, self.rounds, self.previous, noise)
        batch = bounded(self.cfg, self.schedule(self.cfg, at))
        self.previous = batch
        return RoundPlan(batch, 1.0, self.progress, gain_noise if self.cfg.adascale else None)

    def advance(self, gain: float = 1.0) -> None:
        """After a round: the schedule moved on by `gain` rounds (the clients' mean AdaScale
        gain; 1 without AdaScale)."""
        self.progress += gain


@dataclass(frozen=True)
class DeviceLimit:
    """What a client's virtual device asks of B (`clock.batch_policy`): `memory` caps B
    at what fits (`value`: the largest B), `throughput` scales B by the device's speed
    relative to the mean device (`value`: that ratio)."""

    policy: str
    value: float


@dataclass(frozen=True)
class BatchChoice:
    """A client's B for a round and the last rule that set it: `schedule` (the round's B),
    `per_client` (`batch.per_client`), `bounds` (`batch.min`/`batch.max`), `device_memory`,
    `device_throughput` (`clock.batch_policy`) or `data` (no more than the client holds)."""

    size: int
    reason: str


def device_batch_size(batch_size: int, device: DeviceLimit) -> int:
    """B on this device: capped by its memory, or scaled by its relative throughput."""
    if device.policy == "memory":
        return max(1, min(batch_size, int(device.value)))
    return max(1, round(batch_size * device.value))


def choose_client_batch(
    cfg: BatchConfig,
    round_batch: int | str,
    base: int | str,
    partition_id: int,
    num_examples: int,
    mean_examples: float,
    *,
    limit_to_data: bool = True,
    device: DeviceLimit | None = None,
) -> BatchChoice:
    """The one place a client's B is decided, in this order: the round's B (schedule) →
    the per-client rule → `batch.min`/`batch.max` → the device → the client's data.

    A list gives each client its own base B (cycled over partition ids), scaled by the
    schedule as `round_batch / base`; `equal_steps` scales B with the client's data size so
    every client makes the same number of steps per epoch. `limit_to_data=False` (streams,
    whose data keep arriving) does not cap B at the partition's size.
    """
    if not isinstance(round_batch, int) or not isinstance(base, int):
        return BatchChoice(num_examples, "schedule")
    batch: float = round_batch
    reason = "schedule"
    if isinstance(cfg.per_client, tuple):
        batch = cfg.per_client[partition_id % len(cfg.per_client)] * round_batch / base
    elif cfg.per_client == "equal_steps":
        batch = round_batch * num_examples / mean_examples
    if round(batch) != round_batch:
        reason = "per_client"
    size = max(1, round(batch))
    size, reason = _changed(size, bounded(cfg, size), reason, "bounds")
    if device is not None:
        size, reason = _changed(
            size, device_batch_size(size, device), reason, f"device_{device.policy}"
        )
    if limit_to_data:
        size, reason = _changed(size, max(1, min(size, num_examples)), reason, "data")
    return BatchChoice(size, reason)


def _changed(old: int, new: int, reason: str, because: str) -> tuple[int, str]:
    return (new, because) if new != old else (old, reason)
