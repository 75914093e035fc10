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

from fedbatch.checks import ConfigError, check_known, choice, integer, on_off, section
from fedbatch.config.clock import ClockConfig, clock_config
from fedbatch.config.sections import (
    DATASETS,
    IMAGE_DATASETS,
    MODELS,
    DataConfig,
    EngineConfig,
    EvalConfig,
    ModelConfig,
    PartitionConfig,
    StopConfig,
    StrategyConfig,
    data_config,
    engine_config,
    eval_config,
    model_config,
    partition_config,
    stop_config,
    strategy_config,
)
from fedbatch.config.stream import StreamConfig, stream_config
from fedbatch.config.training import (
    FULL_BATCH,
    BatchConfig,
    ClientConfig,
    MonitorConfig,
    batch_config,
    client_config,
    monitor_config,
)

DEVICES = ("auto", "cpu", "cuda")


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
    batch: BatchConfig = field(default_factory=BatchConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_json(self) -> str:
        """The form that travels to clients inside Flower messages."""
        return json.dumps(asdict(self), sort_keys=True)


BUILDERS = {
    "data": data_config,
    "partition": partition_config,
    "model": model_config,
    "client": client_config,
    "batch": batch_config,
    "monitor": monitor_config,
    "stream": stream_config,
    "clock": clock_config,
    "strategy": strategy_config,
    "engine": engine_config,
    "stop": stop_config,
    "eval": eval_config,
}


FLAT = tuple(d for d in DATASETS if d not in IMAGE_DATASETS)


def _check_combinations(cfg: RunConfig) -> None:
    """Values that are fine alone but not together."""
    images = cfg.data.name in IMAGE_DATASETS
    if (cfg.model.name == "cnn" and not images) or (cfg.model.name == "cnn1d" and images):
        fits = [m for m in MODELS if m != ("cnn1d" if images else "cnn")]
        needs = "data=images" if cfg.model.name == "cnn" else f"flat data ({', '.join(FLAT)})"
        raise ConfigError(
            "model",
            cfg.model.name,
            f"one of {', '.join(fits)} with data={cfg.data.name} ({cfg.model.name} needs {needs})",
        )
    if cfg.model.norm == "batch" and cfg.client.batch_size == 1:
        raise ConfigError(
            "client.batch_size",
            1,
            "an integer >= 2 with model.norm=batch (BatchNorm needs "
            "two samples per batch; use model.norm=group or layer for B=1)",
        )
    _check_noise_sources(cfg)
    if cfg.batch.adascale and cfg.client.lr_scaling != "none":
        raise ConfigError(
            "client.lr_scaling",
            cfg.client.lr_scaling,
            "none with batch.adascale (its gain already scales the LR with B)",
        )
    timed = cfg.clock.policy == "deadline_partial" or cfg.clock.batch_policy == "equal_time"
    if cfg.clock.on and timed and cfg.client.batch_size == FULL_BATCH:
        raise ConfigError(
            "client.batch_size",
            FULL_BATCH,
            "an integer with clock deadline_partial or equal_time (steps are planned per B)",
        )
    if cfg.client.precision == "fp16" and cfg.device == "cpu":
        raise ConfigError("client.precision", "fp16", "fp32 or bf16 on device=cpu")
    if cfg.eval.follow_drift and cfg.stream.drift not in ("covariate", "concept"):
        raise ConfigError(
            "eval.follow_drift", True, "false unless stream.drift=covariate or concept"
        )
    if cfg.monitor.noise_exact and cfg.model.norm == "batch":
        raise ConfigError("monitor.noise_exact", cfg.monitor.noise_exact, "0 with model.norm=batch")


def _check_noise_sources(cfg: RunConfig) -> None:
    """Adaptive B and AdaScale follow a noise estimate that must be measured."""
    monitor = cfg.monitor
    if cfg.batch.name == "adaptive" and cfg.batch.noise == "global" and not monitor.noise_across:
        raise ConfigError(
            "monitor.noise_across",
            0,
            ">= 1 with batch=adaptive, which follows the global noise scale "
            "(batch.noise=global), or batch.noise=local with monitor.noise_scale >= 1",
        )
    if cfg.batch.name == "adaptive" and cfg.batch.noise == "local" and not monitor.noise_scale:
        raise ConfigError(
            "monitor.noise_scale", 0, ">= 1 with batch=adaptive and batch.noise=local"
        )
    if cfg.batch.adascale and not monitor.noise_scale:
        raise ConfigError(
            "monitor.noise_scale",
            0,
            ">= 1 with batch.adascale=true (AdaScale follows the clients' own noise)",
        )


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a plain mapping into a RunConfig, or raise ConfigError."""
    top = {k: v for k, v in raw.items() if k not in BUILDERS and k != "hydra"}
    check_known(
        "", top, {"seed", "rounds", "num_clients", "clients_per_round", "device", "progress"}
    )
    num_clients = integer("num_clients", raw.get("num_clients", 10), 1)
    rounds = integer("rounds", raw.get("rounds", 30), 1)
    sections = {name: build(section(raw, name)) for name, build in BUILDERS.items()}
    stream: StreamConfig = sections["stream"]
    sections["stream"] = stream_config(section(raw, "stream"), rounds * stream.round_seconds)
    cfg = RunConfig(
        seed=integer("seed", raw.get("seed", 0), 0),
        rounds=rounds,
        num_clients=num_clients,
        clients_per_round=integer(
            "clients_per_round", raw.get("clients_per_round", 5), 1, num_clients
        ),
        device=choice("device", raw.get("device", "auto"), DEVICES),
        progress=choice("progress", on_off(raw.get("progress", "auto")), ("auto", "on", "off")),
        **sections,
    )
    _check_combinations(cfg)
    return cfg


@lru_cache(maxsize=8)
def config_from_json(text: str) -> RunConfig:
    """Rebuild (and cache) the RunConfig a client receives as JSON."""
    return build_config(json.loads(text))
