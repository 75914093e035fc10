"""The validated run configuration: one object built from Hydra's composed config.

Everything a run does is decided here, at the edge. `build_config` turns a plain mapping
(Hydra's resolved config, or the JSON copy that travels to clients) into frozen dataclasses
and rejects bad input with a `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from fedbatch.checks import (
    ConfigError,
    boolean,
    check_known,
    choice,
    integer,
    integers,
    number,
    on_off,
    optional,
    section,
)

DATASETS = ("synthetic", "mnist1d", "digits", "images")
PARTITIONS = ("iid", "dirichlet", "shards", "quantity")
MODELS = ("logreg", "mlp", "cnn1d", "cnn")
NORMS = ("none", "batch", "group", "layer")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lars")
STRATEGIES = ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad")
ENGINES = ("inprocess", "ray")
DEVICES = ("auto", "cpu", "cuda")
FULL_BATCH = "full"


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


@dataclass(frozen=True)
class PartitionConfig:
    name: str = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    min_partition_size: int = 2


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    norm: str = "none"
    hidden: tuple[int, ...] = (64, 64)
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    groups: int = 4


@dataclass(frozen=True)
class ClientConfig:
    batch_size: int | str = 32
    epochs: int = 2
    steps: int | None = None
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    trust_coefficient: float = 0.001  # LARS's eta (You et al. 2017)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg"
    fraction_evaluate: float = 0.0
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineConfig:
    name: str = "inprocess"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    address: str | None = None
    threads: int = 1


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


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    rounds: int = 30
    num_clients: int = 10
    clients_per_round: int = 5
    device: str = "auto"
    progress: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_json(self) -> str:
        """The form that travels to clients inside Flower messages."""
        return json.dumps(asdict(self), sort_keys=True)


def _batch_size(value: object) -> int | str:
    if value == FULL_BATCH:
        return FULL_BATCH
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError("client.batch_size", value, f"an integer >= 1 or '{FULL_BATCH}'")


# --- building -------------------------------------------------------------------------


def _data(raw: Mapping[str, Any]) -> DataConfig:
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
    )


def _partition(raw: Mapping[str, Any]) -> PartitionConfig:
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


def _model(raw: Mapping[str, Any]) -> ModelConfig:
    d = ModelConfig()
    check_known("model", raw, set(asdict(d)))
    name = choice("model", raw.get("name", d.name), MODELS)
    norm = choice("model.norm", raw.get("norm", d.norm), NORMS)
    if name == "logreg" and norm != "none":
        raise ConfigError("model.norm", norm, "none for model=logreg (it has no hidden layer)")
    return ModelConfig(
        name=name,
        norm=norm,
        hidden=integers("model.hidden", raw.get("hidden", list(d.hidden))),
        channels=integers("model.channels", raw.get("channels", list(d.channels))),
        kernel_size=integer("model.kernel_size", raw.get("kernel_size", d.kernel_size), 1),
        groups=integer("model.groups", raw.get("groups", d.groups), 1),
    )


def _client(raw: Mapping[str, Any]) -> ClientConfig:
    d = ClientConfig()
    check_known("client", raw, set(asdict(d)))
    return ClientConfig(
        batch_size=_batch_size(raw.get("batch_size", d.batch_size)),
        epochs=integer("client.epochs", raw.get("epochs", d.epochs), 1),
        steps=optional(lambda k, v: integer(k, v, 1), "client.steps", raw.get("steps")),
        optimizer=choice("client.optimizer", raw.get("optimizer", d.optimizer), OPTIMIZERS),
        lr=number("client.lr", raw.get("lr", d.lr), 0.0, open_low=True),
        momentum=number(
            "client.momentum", raw.get("momentum", d.momentum), 0.0, 1.0, open_low=False
        ),
        weight_decay=number(
            "client.weight_decay", raw.get("weight_decay", d.weight_decay), 0.0, open_low=False
        ),
        trust_coefficient=number(
            "client.trust_coefficient",
            raw.get("trust_coefficient", d.trust_coefficient),
            0.0,
            open_low=True,
        ),
    )


def _strategy(raw: Mapping[str, Any]) -> StrategyConfig:
    name = choice("strategy", raw.get("name", "fedavg"), STRATEGIES)
    fraction = number(
        "strategy.fraction_evaluate",
        raw.get("fraction_evaluate", 0.0),
        0.0,
        1.0,
        open_low=False,
    )
    # Strategy parameters sit beside `name` in YAML, and under `params` in the JSON copy.
    params = dict(raw.get("params", {}))
    params |= {k: v for k, v in raw.items() if k not in ("name", "fraction_evaluate", "params")}
    for key, value in params.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"strategy.{key}", value, "a number")
    return StrategyConfig(name=name, fraction_evaluate=fraction, params=params)


def _engine(raw: Mapping[str, Any]) -> EngineConfig:
    d = EngineConfig()
    check_known("engine", raw, set(asdict(d)))
    return EngineConfig(
        name=choice("engine", raw.get("name", d.name), ENGINES),
        num_cpus=number("engine.num_cpus", raw.get("num_cpus", d.num_cpus), 0.0, open_low=True),
        num_gpus=number("engine.num_gpus", raw.get("num_gpus", d.num_gpus), 0.0, open_low=False),
        address=raw.get("address"),
        threads=integer("engine.threads", raw.get("threads", d.threads), 1),
    )


def _stop(raw: Mapping[str, Any]) -> StopConfig:
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


def _eval(raw: Mapping[str, Any]) -> EvalConfig:
    check_known("eval", raw, set(asdict(EvalConfig())))
    return EvalConfig(
        every=integer("eval.every", raw.get("every", 1), 1),
        batch_size=integer("eval.batch_size", raw.get("batch_size", 1024), 1),
        initial=boolean("eval.initial", raw.get("initial", True)),
    )


SECTIONS = ("data", "partition", "model", "client", "strategy", "engine", "stop", "eval")


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a plain mapping into a RunConfig, or raise ConfigError."""
    top = {k: v for k, v in raw.items() if k not in SECTIONS and k != "hydra"}
    check_known(
        "", top, {"seed", "rounds", "num_clients", "clients_per_round", "device", "progress"}
    )
    num_clients = integer("num_clients", raw.get("num_clients", 10), 1)
    cfg = RunConfig(
        seed=integer("seed", raw.get("seed", 0), 0),
        rounds=integer("rounds", raw.get("rounds", 30), 1),
        num_clients=num_clients,
        clients_per_round=integer(
            "clients_per_round", raw.get("clients_per_round", 5), 1, num_clients
        ),
        device=choice("device", raw.get("device", "auto"), DEVICES),
        progress=choice("progress", on_off(raw.get("progress", "auto")), ("auto", "on", "off")),
        data=_data(section(raw, "data")),
        partition=_partition(section(raw, "partition")),
        model=_model(section(raw, "model")),
        client=_client(section(raw, "client")),
        strategy=_strategy(section(raw, "strategy")),
        engine=_engine(section(raw, "engine")),
        stop=_stop(section(raw, "stop")),
        eval=_eval(section(raw, "eval")),
    )
    if cfg.model.norm == "batch" and cfg.client.batch_size == 1:
        raise ConfigError(
            "client.batch_size",
            1,
            "an integer >= 2 with model.norm=batch (BatchNorm needs "
            "two samples per batch; use model.norm=group or layer for B=1)",
        )
    return cfg


@lru_cache(maxsize=8)
def config_from_json(text: str) -> RunConfig:
    """Rebuild (and cache) the RunConfig a client receives as JSON."""
    return build_config(json.loads(text))
