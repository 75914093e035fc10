"""Config sections for local training: the client, the batch-size schedule and the probes.

Every batch-size lever of the literature is a key here (docs/science.md has the formulas).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedbatch import registry
from fedbatch.checks import (
    ConfigError,
    SectionReader,
    boolean,
    check_known,
    choice,
    integer,
    number,
    optional,
)
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


@dataclass(frozen=True)
class ClientConfig:
    batch_size: int | str = 32
    epochs: int = 2
    steps: int | None = None
    optimizer: str = "sgd"  # a built-in's name; with `_target_`, its dotted path
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    trust_coefficient: float = 0.001  # LARS's eta (You et al. 2017)
    lr_scaling: str = "none"  # lr · (B / base_batch_size)^{0, 1, 1/2}
    base_batch_size: int = 32
    lr_schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()  # rounds at which the step schedule multiplies by gamma
    lr_gamma: float = 0.1
    min_lr: float = 0.0
    warmup_steps: int = 0
    warmup_epochs: int = 0
    warmup_start: float = 0.0  # warmup starts at this fraction of the target LR
    accumulate: int = 1  # micro-batches per optimizer step (effective batch = accumulate · B)
    precision: str = "fp32"
    regularization: str = "none"  # weight decay and dropout · (B / base_batch_size)^{0, 1, 1/2}
    prefetch: bool = False  # gather the next mini-batch on a background thread
    optimizer_state: str = "reset"  # keep: momentum/moments/step counts carry across rounds
    # `client.optimizer: {_target_: ...}`: a torch.optim.Optimizer subclass and its arguments
    optimizer_target: str | None = None
    optimizer_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchConfig:
    """How B changes over rounds (and across clients); applied by the server each round."""

    name: str = "constant"
    max: int | str = FULL_BATCH
    min: int = 1
    milestones: tuple[int, ...] = ()  # step: rounds at which B is multiplied by `factor`
    factor: float = 2.0
    ramp: str = "linear"  # ramp: linear or geometric from client.batch_size to `max`
    ramp_rounds: int | None = None  # ramp length (default: all rounds)
    rule: str = "simple"  # adaptive: grow toward B_simple, or by the norm test
    theta: float = 1.0  # norm test: grow while B < tr(Σ) / (θ²|G|²)
    growth: float = 2.0  # adaptive: largest factor by which B may grow in one round
    noise: str = "global"  # adaptive: follow the pooled data's B_simple, or the clients' own
    adascale: bool = False  # AdaScale: LR and schedule progress multiplied by the gain r
    per_client: str | tuple[int, ...] = "same"  # a list of B (cycled over clients) or a rule


@dataclass(frozen=True)
class MonitorConfig:
    """Probes, each a frequency in rounds (0 = off, costing nothing)."""

    grad_norm: int = 1  # per-step gradient norm, mean and max
    layer_norms: bool = False  # with grad_norm: also per parameter tensor
    noise_scale: int = 0  # two-batch B_simple within each client, at the round's weights
    noise_big: int | None = None  # its big batch (default 8·B, at most the client's data)
    noise_across: int = 0  # B_simple across clients: a one-step gradient probe round
    noise_average: str = "ema"  # how the server averages |G|² and tr(Σ) over rounds
    noise_decay: float = 0.9  # the EMA's β (0: this round's estimate only)
    noise_exact: int = 0  # exact per-example tr(Σ) and |G|² (torch.func), small models
    sharpness: int = 0  # ε-sharpness (Keskar et al. 2017)
    sharpness_epsilon: float = 1e-3
    hessian: int = 0  # top Hessian eigenvalue by power iteration
    updates: int = 0  # weight norm, update norms and cosine similarity of client updates
    timing: bool = False  # data-loading versus compute seconds per step
    probe_samples: int = 512  # at most this many client samples for curvature probes


def batch_size_value(key: str, value: object) -> int | str:
    if value == FULL_BATCH:
        return FULL_BATCH
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(key, value, f"an integer >= 1 or '{FULL_BATCH}'")


def _rounds(key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, value, "a list of rounds (integers >= 1)")
    return tuple(sorted(integer(f"{key}[{i}]", v, 1) for i, v in enumerate(value)))


FREQUENCIES = ("grad_norm", "noise_scale", "noise_across", "noise_exact", "sharpness", "hessian")
FREQUENCIES += ("updates",)


def _frequency(raw: Mapping[str, Any], key: str, default: int) -> int:
    return integer(f"monitor.{key}", raw.get(key, default), 0)


def _optimizer(raw: Mapping[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """`client.optimizer`: a built-in's name, or `{_target_: module.Class, **kwargs}` (in
    the JSON copy: its path, `optimizer_target` and `optimizer_kwargs`)."""
    value = raw.get("optimizer", ClientConfig.optimizer)
    if isinstance(value, Mapping):
        section = value
    elif raw.get("optimizer_target") is not None:
        section = {"target": raw["optimizer_target"], "kwargs": raw.get("optimizer_kwargs")}
    else:
        return choice("client.optimizer", value, OPTIMIZERS), None, {}
    own = own_class(registry.OPTIMIZERS, section, passed=OPTIMIZER_INPUTS)
    if own is None:
        allowed = "one of " + ", ".join(OPTIMIZERS) + ", or a mapping with _target_"
        raise ConfigError("client.optimizer", dict(value), allowed)
    return own.path, own.path, own.kwargs


def client_config(raw: Mapping[str, Any]) -> ClientConfig:
    d = ClientConfig()
    check_known("client", raw, set(asdict(d)))

    r = SectionReader("client", raw, d)
    positive, non_negative, count, named = r.positive, r.non_negative, r.count, r.named
    optimizer, optimizer_target, optimizer_kwargs = _optimizer(raw)

    return ClientConfig(
        batch_size=batch_size_value("client.batch_size", raw.get("batch_size", d.batch_size)),
        epochs=count("epochs", 1),
        steps=optional(lambda k, v: integer(k, v, 1), "client.steps", raw.get("steps")),
        optimizer=optimizer,
        lr=positive("lr"),
        momentum=non_negative("momentum", 1.0),
        weight_decay=non_negative("weight_decay"),
        trust_coefficient=positive("trust_coefficient"),
        lr_scaling=named("lr_scaling", LR_SCALING),
        base_batch_size=count("base_batch_size", 1),
        lr_schedule=named("lr_schedule", LR_SCHEDULES),
        lr_milestones=_rounds("client.lr_milestones", raw.get("lr_milestones", [])),
        lr_gamma=positive("lr_gamma"),
        min_lr=non_negative("min_lr"),
        warmup_steps=count("warmup_steps", 0),
        warmup_epochs=count("warmup_epochs", 0),
        warmup_start=non_negative("warmup_start", 1.0),
        accumulate=count("accumulate", 1),
        precision=named("precision", PRECISIONS),
        regularization=named("regularization", REGULARIZATION),
        prefetch=r.flag("prefetch"),
        optimizer_state=named("optimizer_state", OPTIMIZER_STATES),
        optimizer_target=optimizer_target,
        optimizer_kwargs=optimizer_kwargs,
    )


def _per_client(value: object) -> str | tuple[int, ...]:
    if isinstance(value, list | tuple) and value:
        return tuple(integer(f"batch.per_client[{i}]", v, 1) for i, v in enumerate(value))
    if isinstance(value, str) and value in PER_CLIENT_RULES:
        return value
    allowed = "one of " + ", ".join(PER_CLIENT_RULES) + ", or a list of batch sizes"
    raise ConfigError("batch.per_client", value, allowed)


def batch_config(raw: Mapping[str, Any]) -> BatchConfig:
    d = BatchConfig()
    check_known("batch", raw, set(asdict(d)))
    minimum = integer("batch.min", raw.get("min", d.min), 1)
    maximum = batch_size_value("batch.max", raw.get("max", d.max))
    if isinstance(maximum, int) and maximum < minimum:
        raise ConfigError("batch.max", maximum, f"'full' or an integer >= batch.min={minimum}")
    name = choice("batch", raw.get("name", d.name), BATCH_SCHEDULES)
    if name == "ramp" and not isinstance(maximum, int):
        raise ConfigError("batch.max", maximum, "an integer with batch=ramp (the ramp's end)")
    return BatchConfig(
        name=name,
        max=maximum,
        min=minimum,
        milestones=_rounds("batch.milestones", raw.get("milestones", [])),
        factor=number("batch.factor", raw.get("factor", d.factor), 1.0, open_low=False),
        ramp=choice("batch.ramp", raw.get("ramp", d.ramp), RAMPS),
        ramp_rounds=optional(
            lambda k, v: integer(k, v, 1), "batch.ramp_rounds", raw.get("ramp_rounds")
        ),
        rule=choice("batch.rule", raw.get("rule", d.rule), ADAPTIVE_RULES),
        theta=number("batch.theta", raw.get("theta", d.theta), 0.0, open_low=True),
        growth=number("batch.growth", raw.get("growth", d.growth), 1.0, open_low=False),
        noise=choice("batch.noise", raw.get("noise", d.noise), NOISE_SOURCES),
        adascale=boolean("batch.adascale", raw.get("adascale", d.adascale)),
        per_client=_per_client(raw.get("per_client", d.per_client)),
    )


def monitor_config(raw: Mapping[str, Any]) -> MonitorConfig:
    d = MonitorConfig()
    check_known("monitor", raw, set(asdict(d)))
    frequencies = {key: _frequency(raw, key, getattr(d, key)) for key in FREQUENCIES}
    return MonitorConfig(
        **frequencies,
        layer_norms=boolean("monitor.layer_norms", raw.get("layer_norms", d.layer_norms)),
        noise_big=optional(
            lambda k, v: integer(k, v, 2), "monitor.noise_big", raw.get("noise_big")
        ),
        noise_average=choice(
            "monitor.noise_average", raw.get("noise_average", d.noise_average), NOISE_AVERAGES
        ),
        noise_decay=number(
            "monitor.noise_decay", raw.get("noise_decay", d.noise_decay), 0.0, 0.999, open_low=False
        ),
        sharpness_epsilon=number(
            "monitor.sharpness_epsilon",
            raw.get("sharpness_epsilon", d.sharpness_epsilon),
            0.0,
            open_low=True,
        ),
        timing=boolean("monitor.timing", raw.get("timing", d.timing)),
        probe_samples=integer(
            "monitor.probe_samples", raw.get("probe_samples", d.probe_samples), 2
        ),
    )
