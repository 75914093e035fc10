"""Config sections for data, model, strategy, engine and the run's stopping and evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedbatch import registry
from fedbatch.checks import (
    ConfigError,
    boolean,
    check_known,
    choice,
    integer,
    integers,
    number,
    optional,
)
from fedbatch.config.targets import own_class

DATASETS = registry.DATASETS.names()
IMAGE_DATASETS = ("images",)  # (C, H, W) samples; the others are flat feature vectors
PARTITIONS = ("iid", "dirichlet", "shards", "quantity")
MODELS = registry.MODELS.names()
NORMS = ("none", "batch", "group", "layer")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
STRATEGIES = registry.STRATEGIES.names()
# What fedbatch passes a `_target_` model's constructor itself (README, "Extending fedbatch").
MODEL_INPUTS = {"input_shape": "the dataset", "num_classes": "the dataset"}
ENGINES = ("inprocess", "ray", "deployment", "vectorized")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    test_fraction: float = 0.2
    num_samples: int = 4000
    # Synthetic(alpha, beta) heterogeneity knobs (LEAF / FedProx).
    alpha: float = 1.0
    beta: float = 1.0
    num_features: int = 60
    num_classes: int = 10
    num_sources: int = 30
    signal: float = 1.0  # images: amplitude of the class templates (the noise's σ is 1.5)


@dataclass(frozen=True)
class PartitionConfig:
    name: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    min_partition_size: int = 2


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # a built-in's name; with `_target_`, its dotted path
    target: str | None = None  # `_target_`: a torch.nn.Module subclass of the user's own
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # the `_target_`'s arguments
    # The built-ins' options (a `_target_` model takes its own from `kwargs`):
    norm: str = "none"
    hidden: tuple[int, ...] = (64, 64)
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    groups: int = 4
    dropout: float = 0.0  # before each hidden layer's output; see client.regularization
    ghost_batch: int | None = None  # BatchNorm statistics over virtual batches of this size
    fedbn: bool = False  # FedBN: normalization layers stay local, never aggregated
    checkpointing: bool = False  # recompute activations in backward (less memory, more time)
    memory_format: str = "auto"  # of 2-D conv weights; auto: channels_last on a oneDNN CPU


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg"  # a built-in's name; with `_target_`, its dotted path
    fraction_evaluate: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)  # None: left unset
    target: str | None = None  # `_target_`: a Flower Strategy subclass of the user's own

    @property
    def set_params(self) -> dict[str, Any]:
        """The parameters given a value; a null one keeps the strategy's default."""
        return {k: v for k, v in self.params.items() if v is not None}


@dataclass(frozen=True)
class EngineConfig:
    name: str = "inprocess"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None
    threads: int = 1
    # deployment: `flwr run <app_dir> <federation>` against a SuperLink with SuperNodes
    federation: str = "local"
    app_dir: str | None = None
    round_timeout: float | None = None  # seconds to wait for a round's replies
    node_timeout: float = 120.0  # seconds to wait for `num_clients` SuperNodes to connect


@dataclass(frozen=True)
class StopConfig:
    target_accuracy: float | None = None
    target_loss: float | None = None
    patience: int | None = None
    min_delta: float = 0.0


@dataclass(frozen=True)
class EvalConfig:
    every: int = 1
    batch_size: int = 1024
    initial: bool = True
    follow_drift: bool = False  # the test set drifts with the stream (covariate, concept)
    train_samples: int = 1000  # fixed sample of the pooled training data for the true gap


# --- building -------------------------------------------------------------------------


def data_config(raw: Mapping[str, Any]) -> DataConfig:
    d = DataConfig()
    check_known("data", raw, set(asdict(d)))
    return DataConfig(
        name=choice("data", raw.get("name", d.name), DATASETS),
        test_fraction=number(
            "data.test_fraction",
            raw.get("test_fraction", d.test_fraction),
            0.0,
            0.9,
            open_low=True,
        ),
        num_samples=integer("data.num_samples", raw.get("num_samples", d.num_samples), 20),
        alpha=number("data.alpha", raw.get("alpha", d.alpha), 0.0, open_low=False),
        beta=number("data.beta", raw.get("beta", d.beta), 0.0, open_low=False),
        num_features=integer("data.num_features", raw.get("num_features", d.num_features), 1),
        num_classes=integer("data.num_classes", raw.get("num_classes", d.num_classes), 2),
        num_sources=integer("data.num_sources", raw.get("num_sources", d.num_sources), 1),
        signal=number("data.signal", raw.get("signal", d.signal), 0.0, open_low=True),
    )


def partition_config(raw: Mapping[str, Any]) -> PartitionConfig:
    d = PartitionConfig()
    check_known("partition", raw, set(asdict(d)))
    return PartitionConfig(
        name=choice("partition", raw.get("name", d.name), PARTITIONS),
        alpha=number("partition.alpha", raw.get("alpha", d.alpha), 0.0, open_low=True),
        shards_per_client=integer(
            "partition.shards_per_client", raw.get("shards_per_client", d.shards_per_client), 1
        ),
        min_partition_size=integer(
            "partition.min_partition_size",
            raw.get("min_partition_size", d.min_partition_size),
            1,
        ),
    )


def model_config(raw: Mapping[str, Any]) -> ModelConfig:
    own = own_class(registry.MODELS, raw, passed=MODEL_INPUTS)
    if own is not None:
        return ModelConfig(name=own.path, target=own.path, kwargs=own.kwargs)
    d = ModelConfig()
    check_known("model", raw, set(asdict(d)))
    if raw.get("kwargs"):
        raise ConfigError("model.kwargs", raw["kwargs"], "none without model._target_")
    name = choice("model", raw.get("name", d.name), MODELS)
    norm = choice("model.norm", raw.get("norm", d.norm), NORMS)
    if name == "logreg" and norm != "none":
        raise ConfigError("model.norm", norm, "none for model=logreg (it has no hidden layer)")
    for key in ("ghost_batch", "fedbn"):
        if raw.get(key) not in (None, False) and norm != "batch":
            raise ConfigError(f"model.{key}", raw[key], "null/false unless model.norm=batch")
    return ModelConfig(
        name=name,
        norm=norm,
        hidden=integers("model.hidden", raw.get("hidden", list(d.hidden))),
        channels=integers("model.channels", raw.get("channels", list(d.channels))),
        kernel_size=integer("model.kernel_size", raw.get("kernel_size", d.kernel_size), 1),
        groups=integer("model.groups", raw.get("groups", d.groups), 1),
        dropout=number("model.dropout", raw.get("dropout", d.dropout), 0.0, 0.95, open_low=False),
        ghost_batch=optional(
            lambda k, v: integer(k, v, 2), "model.ghost_batch", raw.get("ghost_batch")
        ),
        fedbn=boolean("model.fedbn", raw.get("fedbn", d.fedbn)),
        checkpointing=boolean("model.checkpointing", raw.get("checkpointing", d.checkpointing)),
        memory_format=choice(
            "model.memory_format", raw.get("memory_format", d.memory_format), MEMORY_FORMATS
        ),
    )


def strategy_config(raw: Mapping[str, Any]) -> StrategyConfig:
    fraction = number(
        "strategy.fraction_evaluate",
        raw.get("fraction_evaluate", 0.0),
        0.0,
        1.0,
        open_low=False,
    )
    own = own_class(
        registry.STRATEGIES, raw, arguments="params", fedbatch_keys=("fraction_evaluate",)
    )
    if own is not None:  # its parameters: whatever its constructor takes (checked on build)
        return StrategyConfig(own.path, fraction, own.kwargs, target=own.path)
    name = choice("strategy", raw.get("name", "fedavg"), STRATEGIES)
    # Strategy parameters sit beside `name` in YAML, and under `params` in the JSON copy.
    params = dict(raw.get("params", {}))
    own_keys = ("name", "fraction_evaluate", "params", "target")
    params |= {k: v for k, v in raw.items() if k not in own_keys}
    for key, value in params.items():
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ConfigError(f"strategy.{key}", value, "a number or null")
    return StrategyConfig(name=name, fraction_evaluate=fraction, params=params)


def seconds(key: str, value: object) -> float:
    return number(key, value, 0.0, open_low=True)


def engine_config(raw: Mapping[str, Any]) -> EngineConfig:
    d = EngineConfig()
    check_known("engine", raw, set(asdict(d)))
    return EngineConfig(
        name=choice("engine", raw.get("name", d.name), ENGINES),
        num_cpus=number("engine.num_cpus", raw.get("num_cpus", d.num_cpus), 0.0, open_low=True),
        num_gpus=number("engine.num_gpus", raw.get("num_gpus", d.num_gpus), 0.0, open_low=False),
        address=raw.get("address"),
        threads=integer("engine.threads", raw.get("threads", d.threads), 1),
        federation=str(raw.get("federation", d.federation)),
        app_dir=None if raw.get("app_dir") is None else str(raw["app_dir"]),
        round_timeout=optional(seconds, "engine.round_timeout", raw.get("round_timeout")),
        node_timeout=seconds("engine.node_timeout", raw.get("node_timeout", d.node_timeout)),
    )


def stop_config(raw: Mapping[str, Any]) -> StopConfig:
    check_known("stop", raw, set(asdict(StopConfig())))

    def accuracy(k: str, v: object) -> float:
        return number(k, v, 0.0, 1.0, open_low=True)

    def loss(k: str, v: object) -> float:
        return number(k, v, 0.0, open_low=False)

    return StopConfig(
        target_accuracy=optional(accuracy, "stop.target_accuracy", raw.get("target_accuracy")),
        target_loss=optional(loss, "stop.target_loss", raw.get("target_loss")),
        patience=optional(lambda k, v: integer(k, v, 1), "stop.patience", raw.get("patience")),
        min_delta=loss("stop.min_delta", raw.get("min_delta", 0.0)),
    )


def eval_config(raw: Mapping[str, Any]) -> EvalConfig:
    check_known("eval", raw, set(asdict(EvalConfig())))
    return EvalConfig(
        every=integer("eval.every", raw.get("every", 1), 1),
        batch_size=integer("eval.batch_size", raw.get("batch_size", 1024), 1),
        initial=boolean("eval.initial", raw.get("initial", True)),
        follow_drift=boolean("eval.follow_drift", raw.get("follow_drift", False)),
        train_samples=integer("eval.train_samples", raw.get("train_samples", 1000), 0),
    )
