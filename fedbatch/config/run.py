"""The validated run configuration: one object built from Hydra's composed config.

Everything a run does is decided here, at the edge. `build_config` turns a plain mapping
(Hydra's resolved config, or the JSON copy that travels to clients) into frozen dataclasses
and rejects bad input with a `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict
from pydantic.dataclasses import dataclass

from fedbatch.checks import ConfigError, on_off, section
from fedbatch.config.clock import ClockConfig, check_clock, prepare_clock
from fedbatch.config.faults import FaultsConfig
from fedbatch.config.logger import LoggerConfig
from fedbatch.config.privacy import PrivacyConfig
from fedbatch.config.schema import SECTION, Int, key, validate
from fedbatch.config.sections import (
    DATASETS,
    FILE_DATASETS,
    IMAGE_DATASETS,
    MODELS,
    SEQUENCE_MODELS,
    DataConfig,
    EngineConfig,
    EvalConfig,
    ModelConfig,
    PartitionConfig,
    SaveConfig,
    StopConfig,
    StrategyConfig,
    check_model,
    prepare_model,
    prepare_strategy,
)
from fedbatch.config.sequences import TEXT_DATASETS, check_sequences
from fedbatch.config.stream import StreamConfig, check_stream
from fedbatch.config.training import (
    FULL_BATCH,
    BatchConfig,
    ClientConfig,
    MonitorConfig,
    check_batch,
    prepare_client,
)

DEVICES = ("auto", "cpu", "cuda")  # and cuda:<index>, one GPU of several
Device = Annotated[str, Strict(), Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
PROGRESS = ("auto", "on", "off")


@dataclass(frozen=True, config=SECTION)
class RunConfig:
    seed: Int = key(0, ge=0, doc="seeds data, partitions, sampling and initial weights")
    rounds: Int = key(30, ge=1, doc="federated rounds (an upper bound; `stop` may end earlier)")
    num_clients: Int = key(
        10, ge=1, doc="registered clients, one data partition each (partition=natural: the data's)"
    )
    clients_per_round: Int = key(5, ge=1, doc="clients sampled each round (<= num_clients)")
    device: Device = key(
        "auto",
        doc="where clients train: auto picks cuda if present",
        allowed="one of " + ", ".join(DEVICES) + ", or cuda:<index>",
    )
    progress: Literal[PROGRESS] = key(
        "auto", doc="rich progress bar (auto: on a terminal, else a plain line per round)"
    )
    data: DataConfig = key(factory=DataConfig, doc="the dataset")
    partition: PartitionConfig = key(factory=PartitionConfig, doc="the split over clients")
    model: ModelConfig = key(factory=ModelConfig, doc="the model")
    client: ClientConfig = key(factory=ClientConfig, doc="local mini-batch training")
    batch: BatchConfig = key(factory=BatchConfig, doc="B over rounds and across clients")
    monitor: MonitorConfig = key(factory=MonitorConfig, doc="probes, each every k rounds")
    stream: StreamConfig = key(factory=StreamConfig, doc="samples arriving over time")
    clock: ClockConfig = key(factory=ClockConfig, doc="the virtual clock")
    strategy: StrategyConfig = key(factory=StrategyConfig, doc="the server's aggregation")
    engine: EngineConfig = key(factory=EngineConfig, doc="what runs the clients")
    stop: StopConfig = key(factory=StopConfig, doc="convergence on the central test set")
    eval: EvalConfig = key(factory=EvalConfig, doc="the server's evaluation")
    save: SaveConfig = key(factory=SaveConfig, doc="checkpoints and the final model")
    faults: FaultsConfig = key(factory=FaultsConfig, doc="clients that misbehave on purpose")
    privacy: PrivacyConfig = key(factory=PrivacyConfig, doc="differential privacy (clipping)")
    logger: LoggerConfig = key(factory=LoggerConfig, doc="experiment trackers (several at once)")

    def to_json(self) -> str:
        """The form that travels to clients inside Flower messages."""
        return json.dumps(asdict(self), sort_keys=True)


# The YAML forms that are not plain keys, turned into the sections' fields.
PREPARE: dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]] = {
    "model": prepare_model,
    "strategy": prepare_strategy,
    "client": prepare_client,
    "clock": prepare_clock,
}


FLAT = tuple(d for d in DATASETS if d not in (*IMAGE_DATASETS, *FILE_DATASETS, *TEXT_DATASETS))
CLASSIFIERS = tuple(m for m in MODELS if m not in SEQUENCE_MODELS)
IMAGE_MODELS = ("cnn", "resnet")  # 2-D convolutions: (C, H, W) samples only
FLAT_MODELS = ("cnn1d",)


def check_model_input(cfg: RunConfig, input_shape: tuple[int, ...]) -> None:
    """The user's own data: its sample shape is known once loaded."""
    name = cfg.model.name
    fits = [m for m in CLASSIFIERS if _takes(m, input_shape)]
    if name in CLASSIFIERS and name not in fits:
        needs = "(C, H, W) images" if name in IMAGE_MODELS else "flat samples of shape (d,)"
        allowed = f"one of {', '.join(fits)} for samples of shape {input_shape}"
        raise ConfigError("model", name, f"{allowed} ({name} needs {needs})")


def _takes(model: str, input_shape: tuple[int, ...]) -> bool:
    """Whether a built-in classifier can take samples of this shape (logreg and mlp
    flatten any sample)."""
    if model in IMAGE_MODELS:
        return len(input_shape) == 3
    return model not in FLAT_MODELS or len(input_shape) == 1


def _check_combinations(cfg: RunConfig) -> None:
    """Values that are fine alone but not together."""
    check_sequences(cfg)
    images = cfg.data.name in IMAGE_DATASETS
    unfit = FLAT_MODELS if images else IMAGE_MODELS
    # The user's own data (FILE_DATASETS): checked once loaded, by check_model_input.
    if cfg.model.name in unfit and cfg.data.name not in FILE_DATASETS:
        fits = [m for m in CLASSIFIERS if m not in unfit]
        needs = "data=images" if not images else f"flat data ({', '.join(FLAT)})"
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
    _check_batch_bounds(cfg)
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
    if cfg.stop.target_train_loss is not None and (
        cfg.eval.train_samples == 0 or cfg.engine.name == "deployment"
    ):
        allowed = "null unless eval.train_samples >= 1 (not measured in a deployment)"
        raise ConfigError("stop.target_train_loss", cfg.stop.target_train_loss, allowed)
    if cfg.monitor.final and (cfg.eval.train_samples < 2 or cfg.engine.name == "deployment"):
        allowed = "false unless eval.train_samples >= 2 (not measured in a deployment)"
        raise ConfigError("monitor.final", True, allowed)
    if cfg.monitor.noise_exact and cfg.model.norm == "batch":
        raise ConfigError("monitor.noise_exact", cfg.monitor.noise_exact, "0 with model.norm=batch")


def _check_batch_bounds(cfg: RunConfig) -> None:
    """B starts at client.batch_size: bounds that exclude it would change it unasked."""
    start, low, high = cfg.client.batch_size, cfg.batch.min, cfg.batch.max
    if high != FULL_BATCH and low > high:
        raise ConfigError("batch.min", low, f"an integer <= batch.max={high}")
    if start == FULL_BATCH:
        return
    if high != FULL_BATCH and high < start:
        raise ConfigError(
            "batch.max", high, f"'full' or an integer >= client.batch_size={start} (B starts there)"
        )
    if low > start:
        raise ConfigError("batch.min", low, f"an integer <= client.batch_size={start}")


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
    prepared = {k: v for k, v in raw.items() if k != "hydra"}
    if "progress" in prepared:
        prepared["progress"] = on_off(prepared["progress"])
    for name, prepare in PREPARE.items():
        prepared[name] = prepare(section(raw, name))
    natural = section(raw, "partition").get("name") == "natural"
    given_clients = prepared.get("num_clients")
    prepared["data"] = _prepare_data(section(raw, "data"), section(raw, "partition"))
    if natural:
        prepared["num_clients"] = given_clients or 1  # the data's count, set below
    cfg: RunConfig = validate(RunConfig, prepared)
    if natural:
        cfg = _natural_clients(cfg, given_clients)
    if cfg.clients_per_round > cfg.num_clients:
        allowed = f"an integer >= 1 and <= {cfg.num_clients}"
        raise ConfigError("clients_per_round", cfg.clients_per_round, allowed)
    check_model(cfg.model)
    check_batch(cfg.batch)
    check_clock(cfg.clock)
    check_stream(cfg.stream, cfg.rounds * cfg.stream.round_seconds)
    _check_combinations(cfg)
    return cfg


def _prepare_data(data: Mapping[str, Any], partition: Mapping[str, Any]) -> dict[str, Any]:
    """The natural partition's column travels with the data (it is loaded beside the
    features), and a local `data.path` becomes absolute, for processes started elsewhere."""
    prepared = dict(data)
    natural = partition.get("name") == "natural"
    prepared["ids"] = partition.get("by") if natural else None
    path = prepared.get("path")
    if isinstance(path, str) and Path(path).expanduser().exists():
        prepared["path"] = str(Path(path).expanduser().resolve())
    return prepared


def _natural_clients(cfg: RunConfig, given: object) -> RunConfig:
    """num_clients from the data: one client per natural id (or group of ids)."""
    from fedbatch.data.datasets import load_dataset
    from fedbatch.data.partition import natural_count

    if cfg.data.name not in FILE_DATASETS:
        allowed = f"iid, dirichlet, shards or quantity with data={cfg.data.name} (natural "
        raise ConfigError("partition", "natural", allowed + "needs data=hf or data=arrays)")
    if cfg.partition.by is None:
        allowed = "the column (hf) or array (arrays) naming each sample's writer, speaker or user"
        raise ConfigError("partition.by", None, allowed)
    ids = load_dataset(cfg.data, cfg.seed).train_ids
    assert ids is not None  # the loaders return data.ids, which is partition.by
    count = natural_count(ids, cfg.partition.group_size)
    if given is not None and given != count:
        grouped = f" in groups of {cfg.partition.group_size}" if cfg.partition.group_size else ""
        raise ConfigError(
            "num_clients", given, f"{count} or null: partition=natural makes one client per "
            f"{cfg.partition.by!r} value{grouped} in the training data"
        )  # fmt: skip
    return replace(cfg, num_clients=count)


@lru_cache(maxsize=8)
def config_from_json(text: str) -> RunConfig:
    """Rebuild (and cache) the RunConfig a client receives as JSON."""
    return build_config(json.loads(text))
