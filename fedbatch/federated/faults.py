"""Faults a run switches on (`faults.*`), acted out by the ClientApp's train handler.

Each fault is drawn per client partition and round from its own generator, seeded by the
run's seed, the partition, the round and the fault's name, so the same clients misbehave
on every engine, in every rerun and after a resume. A crash raises (Flower's error reply);
NaN weights and an inflated `num-examples` are for the server's reply validation to
reject; a slow client sleeps before replying; a flipped or noisy update is finite
poisoning that passes validation, for robust aggregation to deal with.

The update Δ = w_trained − w_start is that of the trainable parameters: buffers (BatchNorm's
running statistics and step counter) are returned as trained, since a flipped running
variance can turn negative: no finite poisoning, just a model that evaluates to NaN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import MetricRecord
from torch import nn

from fedbatch.config import RunConfig
from fedbatch.config.faults import FAULTS, FaultsConfig
from fedbatch.federated.records import NUM_EXAMPLES
from fedbatch.seeding import derive_seed

INFLATED_EXAMPLES = 10**15
State = Mapping[str, torch.Tensor]


def fault_generator(seed: int, partition_id: int, server_round: int, fault: str) -> torch.Generator:
    """The stream deciding whether `fault` strikes this client this round (its first
    draw, uniform in [0, 1)), then drawing what the fault needs (the noise)."""
    stream = derive_seed(seed, "faults", partition_id, server_round, fault)
    return torch.Generator().manual_seed(stream)


def draw_faults(
    faults: FaultsConfig, seed: int, partition_id: int, server_round: int
) -> dict[str, torch.Generator]:
    """The faults that strike, each with its generator; nothing is drawn for those off."""
    struck = {}
    for fault in FAULTS:
        chance = faults.chance(fault)
        if chance > 0:
            generator = fault_generator(seed, partition_id, server_round, fault)
            if float(torch.rand((), generator=generator)) < chance:
                struck[fault] = generator
    return struck


def flipped(start: State, trained: State, scale: float) -> dict[str, torch.Tensor]:
    """The update reversed and scaled: w_start − k·Δ."""
    return {name: start[name] - scale * (trained[name] - start[name]) for name in trained}


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


def noisy(
    start: State, trained: State, scale: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """w_start + Δ + ε, ε Gaussian with ‖ε‖₂ = scale·‖Δ‖₂ over all tensors together."""
    delta = [trained[name].double() - start[name].double() for name in trained]
    noise = [torch.randn(d.shape, generator=generator, dtype=d.dtype).to(d.device) for d in delta]
    noise_norm = _norm(noise)
    factor = scale * _norm(delta) / noise_norm if noise_norm > 0 else 0.0
    return {
        name: (trained[name].double() + factor * e).to(trained[name].dtype)
        for name, e in zip(trained, noise, strict=True)
    }


def with_nan(state: State) -> dict[str, torch.Tensor]:
    """The state with its first floating-point value NaN."""
    out = dict(state)
    name = next(n for n, t in state.items() if t.is_floating_point())
    out[name] = state[name].clone()
    out[name][(0,) * out[name].dim()] = float("nan")  # any layout (channels_last too)
    return out


@dataclass(frozen=True)
class ClientFaults:
    """The faults striking one client in one round, applied by its train handler."""

    config: FaultsConfig
    struck: dict[str, torch.Generator] = field(default_factory=dict)

    @classmethod
    def draw(cls, cfg: RunConfig, partition_id: int, server_round: int) -> ClientFaults:
        return cls(cfg.faults, draw_faults(cfg.faults, cfg.seed, partition_id, server_round))

    def crash(self) -> None:
        if "crash" in self.struck:
            raise RuntimeError("injected fault (faults.crash)")

    def start(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The parameters before training, when a poisoned update needs them."""
        if "flip" not in self.struck and "noise" not in self.struck:
            return None
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    def reply_state(self, model: nn.Module, start: State | None) -> dict[str, torch.Tensor]:
        """The state the client returns: its trained one, poisoned by what struck (noise
        after a flip scales with the flipped update), NaN last."""
        state = dict(model.state_dict())
        if start is not None:
            trained = {name: state[name] for name in start}
            if "flip" in self.struck:
                trained = flipped(start, trained, self.config.flip_scale)
            if "noise" in self.struck:
                trained = noisy(start, trained, self.config.noise_scale, self.struck["noise"])
            state |= trained
        return with_nan(state) if "nan" in self.struck else state

    def reply_metrics(self, metrics: MetricRecord) -> MetricRecord:
        if "inflate" in self.struck:
            metrics[NUM_EXAMPLES] = INFLATED_EXAMPLES
        return metrics

    def delay(self) -> None:
        if "slow" in self.struck:
            time.sleep(self.config.slow_seconds)
