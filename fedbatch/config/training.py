"""Config sections for local training: the client, the batch-size schedule and the probes.

Every batch-size lever of the literature is a key here (docs/science.md has the formulas),
declared once with its type, range, default and meaning (`fedbatch.config.schema`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from fedbatch import registry
from fedbatch.checks import ConfigError, choice
from fedbatch.config.schema import SECTION, Bool, Count, Float, Int, Rounds, Str, key
from fedbatch.config.targets import own_class

FULL_BATCH = "full"
OPTIMIZERS = registry.OPTIMIZERS.names()
# What fedbatch passes a `_target_` optimizer's constructor itself (README, "Extending fedbatch").
OPTIMIZER_INPUTS = {
    "params": "the model",
    "lr": "client.lr (with its scaling and schedule)",
    "weight_decay": "client.weight_decay",
}
LR_SCALING = ("none", "linear", "sqrt")
LR_SCHEDULES = ("constant", "step", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
REGULARIZATION = ("none", "linear", "sqrt")
BATCH_SCHEDULES = registry.BATCH_SCHEDULES.names()
RAMPS = ("linear", "geometric")
ADAPTIVE_RULES = ("simple", "norm_test")
NOISE_SOURCES = ("global", "local")  # B_simple of the pooled data, or within clients
NOISE_AVERAGES = ("ema", "mean")
PER_CLIENT_RULES = ("same", "equal_steps")
OPTIMIZER_STATES = ("reset", "keep")  # a fresh optimizer each round, or its state kept

BatchSize = Count | Literal["full"]
FULL_OR_INT = f"an integer >= 1 or '{FULL_BATCH}'"


@dataclass(frozen=True, config=SECTION)
class ClientConfig:
    batch_size: BatchSize = key(32, doc="B: 1 is plain SGD, `full` full-batch gradient descent")
    epochs: Int = key(2, ge=1, doc="local epochs per round (ignored when `steps` is set)")
    steps: Int | None = key(None, ge=1, doc="exactly this many local steps per round instead")
    optimizer: Str = key(
        "sgd",
        doc="a built-in, or your own: {_target_: torch.optim.Adam, ...}",
        allowed="one of " + ", ".join(OPTIMIZERS) + ", or a mapping with _target_",
    )
    lr: Float = key(0.1, gt=0, doc="learning rate (at base_batch_size, before warmup)")
    momentum: Float = key(0.9, ge=0, le=1, doc="for momentum, nesterov and lars")
    weight_decay: Float = key(0.0, ge=0, doc="L2 penalty (see `regularization`)")
    trust_coefficient: Float = key(0.001, gt=0, doc="LARS's η (You et al. 2017)")
    lr_scaling: Literal[LR_SCALING] = key(
        "none", doc="lr · (B / base_batch_size)^{0, 1, ½}: none, linear (Goyal et al.), sqrt"
    )
    base_batch_size: Int = key(32, ge=1, doc="the B at which `lr` was tuned")
    lr_schedule: Literal[LR_SCHEDULES] = key("constant", doc="over the run's rounds")
    lr_milestones: Rounds = key((), doc="step schedule: rounds at which the LR is × lr_gamma")
    lr_gamma: Float = key(0.1, gt=0, doc="step schedule's factor")
    min_lr: Float = key(0.0, ge=0, doc="cosine schedule's final LR")
    warmup_steps: Int = key(0, ge=0, doc="linear warmup over this many local steps ...")
    warmup_epochs: Int = key(0, ge=0, doc="... or local epochs")
    warmup_start: Annotated[Float, Field(ge=0, le=1)] | Literal["base"] = key(
        0.0,
        doc="warmup starts at this fraction of the LR, or at `base`: client.lr before "
        "lr_scaling (Goyal et al.'s gradual warmup from the small-batch LR)",
        allowed="a number >= 0.0 and <= 1.0, or 'base'",
    )
    accumulate: Int = key(1, ge=1, doc="micro-batches of B per optimizer step (effective k·B)")
    precision: Literal[PRECISIONS] = key(
        "fp32", doc="bf16: autocast on CPU or CUDA; fp16: CUDA with GradScaler"
    )
    regularization: Literal[REGULARIZATION] = key(
        "none", doc="weight decay and dropout · (B / base_batch_size)^{0, 1, ½}"
    )
    prefetch: Bool = key(False, doc="gather the next mini-batch on a background thread")
    bucket_by_length: Bool = key(
        False, doc="data=text: batches of sequences of similar length (less padding)"
    )
    optimizer_state: Literal[OPTIMIZER_STATES] = key(
        "reset", doc="reset: a fresh optimizer each round; keep: its state carries over"
    )
    optimizer_target: Str | None = key(None, internal=True, doc="`_target_` of `optimizer`")
    optimizer_kwargs: Mapping[str, Any] = key(
        factory=dict, internal=True, doc="the `_target_` optimizer's arguments"
    )


@dataclass(frozen=True, config=SECTION)
class BatchConfig:
    """How B changes over rounds (and across clients); applied by the server each round."""

    name: Literal[BATCH_SCHEDULES] = key("constant", doc="the batch-size schedule")
    max: BatchSize = key(FULL_BATCH, doc="upper bound on B (`full`: the client's dataset)")
    min: Int = key(1, ge=1, doc="lower bound on B")
    milestones: Rounds = key((), only=("step",), doc="rounds at which B is multiplied by `factor`")
    factor: Float = key(2.0, ge=1, only=("step",), doc="step: B's factor at each milestone")
    ramp: Literal[RAMPS] = key(
        "linear", only=("ramp",), doc="from client.batch_size to `max`: linear or geometric"
    )
    ramp_rounds: Int | None = key(None, ge=1, only=("ramp",), doc="ramp length (null: all rounds)")
    rule: Literal[ADAPTIVE_RULES] = key(
        "simple", only=("adaptive",), doc="grow toward B_simple, or by the norm test"
    )
    theta: Float = key(
        1.0, gt=0, only=("adaptive",), doc="norm test: grow while B < tr(Σ) / (θ²|G|²)"
    )
    growth: Float = key(
        2.0, ge=1, only=("adaptive",), doc="largest factor by which B may grow in one round"
    )
    noise: Literal[NOISE_SOURCES] = key(
        "global", only=("adaptive",), doc="follow the pooled data's B_simple, or the clients'"
    )
    adascale: Bool = key(False, doc="AdaScale: LR and schedule progress × the gain r")
    per_client: Literal[PER_CLIENT_RULES] | Annotated[tuple[Count, ...], Field(min_length=1)] = key(
        "same",
        doc="same, equal_steps (B ∝ client data), or a list of B cycled over clients",
        allowed="one of " + ", ".join(PER_CLIENT_RULES) + ", or a list of batch sizes",
    )


@dataclass(frozen=True, config=SECTION)
class MonitorConfig:
    """Probes, each a frequency in rounds (0 = off, costing nothing)."""

    grad_norm: Int = key(1, ge=0, doc="per-step gradient norm, mean and max")
    layer_norms: Bool = key(False, doc="with grad_norm: also per parameter tensor")
    noise_scale: Int = key(0, ge=0, doc="two-batch B_simple within each client")
    noise_big: Int | None = key(None, ge=2, doc="its big batch (null: 8·B, at most the data)")
    noise_across: Int = key(0, ge=0, doc="B_simple across clients: a one-step probe round")
    noise_average: Literal[NOISE_AVERAGES] = key(
        "ema", doc="the server's average of |G|² and tr(Σ) over rounds"
    )
    noise_decay: Float = key(0.9, ge=0, le=0.999, doc="the EMA's β (0: this round only)")
    noise_exact: Int = key(0, ge=0, doc="exact per-example tr(Σ) and |G|² (torch.func)")
    sharpness: Int = key(0, ge=0, doc="ε-sharpness (Keskar et al. 2017)")
    sharpness_epsilon: Float = key(1e-3, gt=0, doc="its ε")
    sharpness_steps: Int = key(
        5, ge=1, doc="its projected-ascent steps (a lower bound; more steps, a tighter one)"
    )
    hessian: Int = key(0, ge=0, doc="top Hessian eigenvalue by power iteration")
    hessian_iterations: Int = key(
        20, ge=1, doc="its most Hessian-vector products (a small eigengap needs more)"
    )
    updates: Int = key(0, ge=0, doc="weight norm, update norms and cosine of client updates")
    timing: Bool = key(False, doc="data-loading versus compute seconds per step")
    probe_samples: Int = key(512, ge=2, doc="at most this many client samples for the probes")
    final: Bool = key(
        False,
        doc="after the last round: ε-sharpness and top Hessian eigenvalue of the final "
        "global model on the pooled training sample (eval.train_samples)",
    )


# --- the YAML forms that are not plain keys, and checks across keys -------------------


def prepare_client(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`client.optimizer`: a built-in's name, or `{_target_: module.Class, **kwargs}` (in
    the JSON copy: its path, `optimizer_target` and `optimizer_kwargs`)."""
    value = raw.get("optimizer", ClientConfig.optimizer)
    if isinstance(value, Mapping):
        section = value
    elif raw.get("optimizer_target") is not None:
        section = {"target": raw["optimizer_target"], "kwargs": raw.get("optimizer_kwargs")}
    else:
        choice("client.optimizer", value, OPTIMIZERS)
        return dict(raw)
    own = own_class(registry.OPTIMIZERS, section, passed=OPTIMIZER_INPUTS)
    if own is None:
        allowed = "one of " + ", ".join(OPTIMIZERS) + ", or a mapping with _target_"
        raise ConfigError("client.optimizer", dict(value), allowed)
    return dict(raw) | {
        "optimizer": own.path,
        "optimizer_target": own.path,
        "optimizer_kwargs": own.kwargs,
    }


def check_batch(batch: BatchConfig) -> None:
    if isinstance(batch.max, int) and batch.max < batch.min:
        raise ConfigError("batch.max", batch.max, f"'full' or an integer >= batch.min={batch.min}")
    if batch.name == "ramp" and not isinstance(batch.max, int):
        raise ConfigError("batch.max", batch.max, "an integer with batch=ramp (the ramp's end)")
