"""Batch-size schedules: which B each round and each client trains with (pure, no Flower).

The server asks a `BatchPlanner` for the round's plan and sends it to the clients in their
ConfigRecords; each client then applies the per-client rule to its own data size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedbatch.config import FULL_BATCH, BatchConfig
from fedbatch.local.optim import adascale_gain


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
    lr_gain: float  # AdaScale's gain r (1 without AdaScale)
    progress: float  # schedule progress in rounds at the round's start (AdaScale: Σ r)


def scheduled_batch_size(cfg: BatchConfig, base: int, server_round: int, rounds: int) -> int:
    """B of a deterministic schedule (constant, step, ramp) at `server_round` (from 1)."""
    if cfg.name == "step":
        passed = sum(1 for m in cfg.milestones if m <= server_round)
        return round(base * cfg.factor**passed)
    if cfg.name == "ramp":
        if not isinstance(cfg.max, int):
            raise ValueError("a ramp needs an integer batch.max")
        length = cfg.ramp_rounds or rounds
        fraction = 1.0 if length <= 1 else min((server_round - 1) / (length - 1), 1.0)
        if cfg.ramp == "geometric":
            return round(base * (cfg.max / base) ** fraction)
        return round(base + fraction * (cfg.max - base))
    return base


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

    AdaScale's base batch B₀ is `base` (`client.batch_size`, where the schedule starts and
    for which the LR is set); its B is the round's effective batch, B × `accumulate`.
    """

    def __init__(self, cfg: BatchConfig, base: int | str, rounds: int, accumulate: int = 1) -> None:
        self.cfg, self.base, self.rounds, self.accumulate = cfg, base, rounds, accumulate
        self.progress = 0.0
        self.previous = base if isinstance(base, int) else None

    def plan(
        self,
        server_round: int,
        noise: NoiseEstimate | None = None,
        gain_noise: NoiseEstimate | None = None,
    ) -> RoundPlan:
        """The round's plan. `noise`, the latest estimate `batch.noise` names, drives
        adaptive B; `gain_noise`, the within-client one (a client's steps draw from its own
        data), drives AdaScale's gain."""
        if not isinstance(self.base, int):  # client.batch_size=full: nothing to schedule
            return RoundPlan(FULL_BATCH, 1.0, self._advance(1.0))
        if self.cfg.name == "adaptive":
            assert self.previous is not None
            batch = adaptive_batch_size(self.cfg, self.previous, noise)
        else:
            batch = scheduled_batch_size(self.cfg, self.base, server_round, self.rounds)
        batch = bounded(self.cfg, batch)
        self.previous = batch
        gain = 1.0
        if self.cfg.adascale and gain_noise is not None:
            effective = max(batch * self.accumulate, self.base)
            gain = adascale_gain(gain_noise.trace, gain_noise.grad_sq, self.base, effective)
        return RoundPlan(batch, gain, self._advance(gain))

    def _advance(self, gain: float) -> float:
        start = self.progress
        self.progress += gain
        return start


def client_batch_size(
    cfg: BatchConfig,
    round_batch: int | str,
    base: int | str,
    partition_id: int,
    num_examples: int,
    mean_examples: float,
    limit_to_data: bool = True,
) -> int:
    """The B one client uses: the round's B after the per-client rule, within its data.

    A list gives each client its own base B (cycled over partition ids), scaled by the
    schedule as `round_batch / base`; `equal_steps` scales B with the client's data size so
    every client makes the same number of steps per epoch. `limit_to_data=False` (streams,
    whose data keep arriving) does not cap B at the partition's size.
    """
    if not isinstance(round_batch, int) or not isinstance(base, int):
        return num_examples
    batch: float = round_batch
    if isinstance(cfg.per_client, tuple):
        batch = cfg.per_client[partition_id % len(cfg.per_client)] * round_batch / base
    elif cfg.per_client == "equal_steps":
        batch = round_batch * num_examples / mean_examples
    batch = bounded(cfg, max(1, round(batch)))
    return max(1, min(batch, num_examples)) if limit_to_data else batch
