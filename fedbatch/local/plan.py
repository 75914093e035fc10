"""One client's hyperparameters for one round: B, LR per step, regularization (pure).

The server sends the round's batch size, schedule progress and, for AdaScale, the noise
estimate; the client
turns them into its own values with `plan_client_round`, given the size of its data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from fedbatch.config import RunConfig
from fedbatch.local.batch_sizing import DeviceLimit, RoundPlan, choose_client_batch
from fedbatch.local.optim import adascale_gain, lr_at, scaled_lr

_EXPONENT = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


@dataclass(frozen=True)
class LocalPlan:
    batch_size: int  # micro-batch B
    effective_batch_size: int  # B · accumulate: samples per optimizer step
    steps_per_round: int
    lr: float  # after scaling, before schedule and warmup
    weight_decay: float
    dropout: float
    lr_at: Callable[[int], float] | None  # LR of local step s, or None when constant
    accumulate: int = 1
    micro_batch: int | None = None  # memory split of each micro-batch (same update)
    batch_reason: str = "schedule"  # the rule that set batch_size (`BatchChoice.reason`)
    lr_gain: float = 1.0  # AdaScale's gain r at this client's effective batch

    def first_lr(self) -> float:
        return self.lr_at(0) if self.lr_at is not None else self.lr

    def with_micro_batch(self, micro_batch: int | None) -> LocalPlan:
        return self if micro_batch is None else dataclasses.replace(self, micro_batch=micro_batch)

    @property
    def pass_batch(self) -> int:
        """Samples per forward/backward pass."""
        return min(self.batch_size, self.micro_batch or self.batch_size)

    @property
    def passes(self) -> int:
        """Forward/backward passes per optimizer step."""
        return math.ceil(self.accumulate * self.batch_size / self.pass_batch)


def steps_per_round(cfg: RunConfig, num_examples: int, effective_batch: int) -> int:
    if cfg.client.steps is not None:
        return cfg.client.steps
    return cfg.client.epochs * math.ceil(num_examples / effective_batch)


def plan_client_round(
    cfg: RunConfig,
    plan: RoundPlan,
    partition_id: int,
    num_examples: int,
    mean_examples: float,
    device: DeviceLimit | None = None,
) -> LocalPlan:
    """This client's values for the round.

    The LR schedule runs in local steps as if the client trained every round: round r
    starts at step progress·S (S = this client's steps per round), so milestones in rounds
    and warmup in steps or epochs mean the same for every client. AdaScale multiplies the
    LR by its gain r and advances the schedule r steps per step.
    """
    client = cfg.client
    streaming = cfg.stream.streaming  # a stream's data keep arriving: B is not capped by n
    choice = choose_client_batch(
        cfg.batch,
        plan.batch_size,
        client.batch_size,
        partition_id,
        num_examples,
        mean_examples,
        limit_to_data=not streaming,
        device=device,
    )
    batch = choice.size
    effective = batch * client.accumulate
    if not streaming:  # a step cannot hold more than the client's data
        effective = min(effective, num_examples)
    per_round = steps_per_round(cfg, num_examples, effective)
    lr = scaled_lr(client.lr, effective, client.base_batch_size, client.lr_scaling)
    regularization = (effective / client.base_batch_size) ** _EXPONENT[client.regularization]
    warmup = client.warmup_steps or client.warmup_epochs * math.ceil(num_examples / effective)
    gain = plan.lr_gain
    if plan.gain_noise is not None and isinstance(client.batch_size, int):
        # AdaScale at the batch this client steps with (capped by its data, per-client
        # rules and its device included): B₀ = client.batch_size, B = its effective batch.
        noise, base = plan.gain_noise, client.batch_size
        gain = adascale_gain(noise.trace, noise.grad_sq, base, max(effective, base))
    scheduled = client.lr_schedule != "constant" or warmup > 0 or gain != 1.0
    step_lr = None
    # `base`: from the unscaled LR (Goyal et al.), a fraction lr/scaled of the target.
    warmup_start = (
        min(1.0, client.lr / lr) if client.warmup_start == "base" else client.warmup_start
    )
    if scheduled:
        start = plan.progress * per_round
        total = cfg.rounds * per_round
        milestones = tuple((m - 1) * per_round for m in client.lr_milestones)

        def step_lr(step: int) -> float:
            return gain * lr_at(
                start + gain * step,
                lr=lr,
                total_steps=total,
                schedule=client.lr_schedule,
                warmup_steps=warmup,
                warmup_start=warmup_start,
                milestones=milestones,
                gamma=client.lr_gamma,
                min_lr=client.min_lr,
            )

    return LocalPlan(
        batch_size=batch,
        effective_batch_size=effective,
        steps_per_round=per_round,
        lr=lr,
        weight_decay=client.weight_decay * regularization,
        dropout=min(cfg.model.dropout * regularization, 0.95),
        lr_at=step_lr,
        accumulate=client.accumulate,
        batch_reason=choice.reason,
        lr_gain=gain,
    )
