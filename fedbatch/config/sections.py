"""Config sections for data, model, strategy, engine and the run's stopping and evaluation.

Each key's type, range, default and meaning is declared once here (`fedbatch.config.schema`);
the `prepare_*` functions turn the YAML forms that are not plain keys (a `_target_`,
strategy parameters beside `name`) into the section's fields before validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic.dataclasses import dataclass

from fedbatch import registry
from fedbatch.checks import ConfigError, choice
from fedbatch.config.schema import SECTION, Bool, Count, Float, Int, Str, key
from fedbatch.config.targets import own_class

DATASETS = registry.DATASETS.names()
IMAGE_DATASETS = ("images",)  # (C, H, W) samples; the others are flat feature vectors
FILE_DATASETS = ("hf", "arrays")  # the user's own: their shape is known once loaded
PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "natural")
MODELS = registry.MODELS.names()
NORMS = ("none", "batch", "group", "layer")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
STRATEGIES = registry.STRATEGIES.names()
# What fedbatch passes a `_target_` model's constructor itself (README, "Extending fedbatch").
MODEL_INPUTS = {"input_shape": "the dataset", "num_classes": "the dataset"}
ENGINES = ("inprocess", "ray", "deployment", "vectorized")

# The built-in models that ignore a key (a new model takes them all).
SEQUENCE_MODELS = ("gru", "transformer")  # causal language models for data=text
LINEAR = ("logreg",)  # no hidden layer to size, normalise or drop out
NO_LAYER_OPTIONS = (*LINEAR, *SEQUENCE_MODELS)  # norm, groups, ghost_batch, fedbn, ...
NOT_MLP = ("logreg", "cnn", "cnn1d", "resnet", *SEQUENCE_MODELS)
NOT_CONV = ("logreg", "mlp", *SEQUENCE_MODELS)
SKEWED = ("dirichlet", "quantity")


@dataclass(frozen=True, config=SECTION)
class DataConfig:
    name: Literal[DATASETS] = key("digits", doc="built-in dataset")
    test_fraction: Float = key(0.2, gt=0, le=0.9, doc="share held out as the central test set")
    num_samples: Int = key(
        4000,
        ge=20,
        not_for=("digits", *FILE_DATASETS),
        doc="samples generated (train + test); text: sequences, or data.path's first lines",
    )
    # Synthetic(alpha, beta) heterogeneity knobs (LEAF / FedProx).
    alpha: Float = key(1.0, ge=0, only=("synthetic",), doc="how much the sources' models differ")
    beta: Float = key(1.0, ge=0, only=("synthetic",), doc="how much the sources' inputs differ")
    num_features: Int = key(60, ge=1, only=("synthetic",), doc="input features")
    num_classes: Int = key(
        10, ge=2, not_for=("digits", "mnist1d", "text", *FILE_DATASETS), doc="classes"
    )
    num_sources: Int = key(30, ge=1, only=("synthetic",), doc="sources (LEAF's users)")
    signal: Float = key(
        1.0, gt=0, only=("images",), doc="amplitude of the class templates (the noise's σ is 1.5)"
    )
    # The user's own data (fedbatch/data/files.py; README, "Your own data and model").
    path: Str | None = key(
        None,
        only=(*FILE_DATASETS, "text"),
        doc="a file or directory (hf: parquet, csv, json, arrow, image folder, or a Hub id; "
        "arrays: .npz or .pt; text: a UTF-8 text file, a sequence per line, null: generated)",
    )
    max_length: Int = key(256, ge=1, only=("text",), doc="characters kept per sequence")
    column: Str | None = key(
        None,
        only=("text",),
        doc="data.path read as data=hf reads it (parquet, csv, json, arrow, a Hub id): its "
        "column of strings, a sequence per row; null: data.path is a text file",
    )
    split: Str = key("train", only=("hf", "text"), doc="the split to train on")
    test_split: Str | None = key(
        None, only=("hf",), doc="the split to test on; null: hold out data.test_fraction"
    )
    features: tuple[Str, ...] = key(
        (), only=("hf",), doc="feature columns; empty: all but data.label and partition.by"
    )
    label: Str = key("label", only=("hf",), doc="the class-label column")
    normalize: Bool = key(
        False, only=FILE_DATASETS, doc="standardise each feature (image: channel) by the train set"
    )
    ids: Str | None = key(
        None, internal=True, doc="partition.by, loaded beside the features (natural partitions)"
    )


@dataclass(frozen=True, config=SECTION)
class PartitionConfig:
    name: Literal[PARTITIONS] = key("iid", doc="how the training data is split over clients")
    alpha: Float = key(
        0.5, gt=0, only=SKEWED, doc="Dirichlet concentration: smaller is more skewed"
    )
    shards_per_client: Int = key(2, ge=1, only=("shards",), doc="label-sorted shards per client")
    min_partition_size: Int = key(
        2, ge=1, only=SKEWED, doc="resample until every client has this many"
    )
    by: Str | None = key(
        None, only=("natural",), doc="the column naming each sample's writer, speaker or user"
    )
    group_size: Int | None = key(
        None, ge=1, only=("natural",), doc="ids per client (null: one client per id)"
    )


@dataclass(frozen=True, config=SECTION)
class ModelConfig:
    name: Str = key(
        "mlp",
        doc="a built-in's name; with `_target_`, its dotted path",
        allowed="one of " + ", ".join(MODELS),
    )
    target: Str | None = key(None, internal=True, doc="`_target_`: an nn.Module class of your own")
    kwargs: Mapping[str, Any] = key(factory=dict, internal=True, doc="the `_target_`'s arguments")
    # The built-ins' options (a `_target_` model takes its own from `kwargs`):
    norm: Literal[NORMS] = key(
        "none", not_for=NO_LAYER_OPTIONS, doc="normalization after each hidden layer"
    )
    hidden: tuple[Count, ...] = key((64, 64), not_for=NOT_MLP, min_length=1, doc="hidden widths")
    channels: tuple[Count, ...] = key(
        (16, 32), not_for=NOT_CONV, min_length=1, doc="channels of the conv layers"
    )
    kernel_size: Int = key(5, ge=1, not_for=NOT_CONV, doc="conv kernel size")
    blocks: Int = key(
        1,
        ge=1,
        only=("resnet",),
        doc="residual blocks per stage (3 stages: 1 ResNet-8, 3 ResNet-20)",
    )
    groups: Int = key(4, ge=1, not_for=NO_LAYER_OPTIONS, doc="GroupNorm groups (norm=group)")
    dropout: Float = key(
        0.0,
        ge=0,
        le=0.95,
        not_for=LINEAR,
        doc="after each hidden block; see client.regularization",
    )
    ghost_batch: Int | None = key(
        None,
        ge=2,
        not_for=NO_LAYER_OPTIONS,
        doc="norm=batch: statistics over virtual batches of this size",
    )
    fedbn: Bool = key(
        False, not_for=NO_LAYER_OPTIONS, doc="norm=batch: FedBN, normalization layers stay local"
    )
    checkpointing: Bool = key(
        False,
        not_for=NO_LAYER_OPTIONS,
        doc="recompute activations in backward: less memory, more time",
    )
    width: Int = key(64, ge=1, only=SEQUENCE_MODELS, doc="embedding and hidden size")
    layers: Int = key(1, ge=1, only=SEQUENCE_MODELS, doc="GRU or attention layers")
    heads: Int = key(4, ge=1, only=("transformer",), doc="attention heads (divide width)")
    memory_format: Literal[MEMORY_FORMATS] = key(
        "auto",
        not_for=(*NOT_CONV, "cnn1d"),
        doc="of conv weights; auto: channels_last on a oneDNN CPU",
    )


@dataclass(frozen=True, config=SECTION)
class StrategyConfig:
    name: Str = key(
        "fedavg",
        doc="a built-in's name; with `_target_`, its dotted path",
        allowed="one of " + ", ".join(STRATEGIES),
    )
    fraction_evaluate: Float = key(
        0.0, ge=0, le=1, doc="fraction of clients that also evaluate the global model"
    )
    # The strategy's own parameters sit beside `name` in YAML (their defaults: its YAML)
    params: Mapping[str, Any] = key(
        factory=dict, internal=True, doc="the strategy's parameters (null: its default)"
    )
    target: Str | None = key(None, internal=True, doc="`_target_`: a Flower Strategy of your own")

    @property
    def set_params(self) -> dict[str, Any]:
        """The parameters given a value; a null one keeps the strategy's default."""
        return {k: v for k, v in self.params.items() if v is not None}


@dataclass(frozen=True, config=SECTION)
class EngineConfig:
    name: Literal[ENGINES] = key("inprocess", doc="what runs the clients")
    num_cpus: Float = key(1.0, gt=0, only=("ray",), doc="CPUs per client actor")
    num_gpus: Float = key(0.0, ge=0, only=("ray",), doc="GPU fraction per client actor")
    address: Str | None = key(None, only=("ray",), doc="an existing Ray cluster (e.g. auto)")
    threads: Int = key(1, ge=1, doc="torch CPU threads per process running clients")
    federation: Str = key(
        "local", only=("deployment",), doc="SuperLink connection in $FLWR_HOME/config.toml"
    )
    app_dir: Str | None = key(
        None, only=("deployment",), doc="the Flower app directory; null: this fedbatch install"
    )
    round_timeout: Float | None = key(
        None, gt=0, only=("deployment",), doc="seconds to wait for a round's replies"
    )
    node_timeout: Float = key(
        120.0, gt=0, only=("ray", "deployment"), doc="seconds to wait for the nodes to connect"
    )
    shared_dir: Bool = key(
        False,
        only=("deployment",),
        doc="the SuperLink's machine sees the run directory at the same path (deploy local): "
        "its ServerApp writes the run's files, checkpoints and model, and resume= works",
    )


@dataclass(frozen=True, config=SECTION)
class StopConfig:
    target_accuracy: Float | None = key(None, gt=0, le=1, doc="stop once test accuracy >= this")
    target_loss: Float | None = key(None, ge=0, doc="stop once test loss <= this")
    target_train_loss: Float | None = key(
        None, ge=0, doc="stop once the global model's train loss (global_train_loss) <= this"
    )
    patience: Int | None = key(
        None, ge=1, doc="stop after this many evaluations without improvement"
    )
    min_delta: Float = key(0.0, ge=0, doc="smallest change that counts as an improvement")
    at_target: Bool = key(
        True, doc="stop at a target; false: record rounds/steps to it and train on"
    )


@dataclass(frozen=True, config=SECTION)
class EvalConfig:
    every: Int = key(1, ge=1, doc="server-side evaluation every k rounds (and the last)")
    batch_size: Int = key(1024, ge=1, doc="evaluation batch size (does not change results)")
    initial: Bool = key(True, doc="evaluate the initial model as round 0")
    follow_drift: Bool = key(False, doc="the test set drifts with the stream (covariate, concept)")
    train_samples: Int = key(
        1000, ge=0, doc="fixed sample of the pooled training data for the true gap (0: off)"
    )


@dataclass(frozen=True, config=SECTION)
class SaveConfig:
    every: Int = key(
        10,
        ge=0,
        doc="write checkpoint.pt every k rounds (0: only when interrupted); resume=<run dir>",
    )
    model: Bool = key(True, doc="write the final global model, model.safetensors")


# --- the YAML forms that are not plain keys -------------------------------------------


def prepare_model(raw: Mapping[str, Any]) -> dict[str, Any]:
    own = own_class(registry.MODELS, raw, passed=MODEL_INPUTS)
    if own is not None:
        return {"name": own.path, "target": own.path, "kwargs": own.kwargs}
    if raw.get("kwargs"):
        raise ConfigError("model.kwargs", raw["kwargs"], "none without model._target_")
    if raw.get("target") is None:
        choice("model", raw.get("name", ModelConfig.name), MODELS)
    return dict(raw)


def check_model(model: ModelConfig) -> None:
    if model.name == "logreg" and model.norm != "none":
        raise ConfigError(
            "model.norm", model.norm, "none for model=logreg (it has no hidden layer)"
        )
    if model.name == "resnet" and model.kernel_size % 2 == 0:
        allowed = "an odd number with model=resnet (a block adds its input to its output)"
        raise ConfigError("model.kernel_size", model.kernel_size, allowed)
    for name in ("ghost_batch", "fedbn"):
        value = getattr(model, name)
        if value not in (None, False) and model.norm != "batch":
            raise ConfigError(f"model.{name}", value, "null/false unless model.norm=batch")


def prepare_strategy(raw: Mapping[str, Any]) -> dict[str, Any]:
    fraction = raw.get("fraction_evaluate", StrategyConfig.fraction_evaluate)
    own = own_class(
        registry.STRATEGIES, raw, arguments="params", fedbatch_keys=("fraction_evaluate",)
    )
    if own is not None:  # its parameters: whatever its constructor takes (checked on build)
        return {
            "name": own.path,
            "fraction_evaluate": fraction,
            "params": own.kwargs,
            "target": own.path,
        }
    name = choice("strategy", raw.get("name", StrategyConfig.name), STRATEGIES)
    # Strategy parameters sit beside `name` in YAML, and under `params` in the JSON copy.
    params = dict(raw.get("params", {}))
    own_keys = ("name", "fraction_evaluate", "params", "target")
    params |= {k: v for k, v in raw.items() if k not in own_keys}
    for parameter, value in params.items():
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ConfigError(f"strategy.{parameter}", value, "a number or null")
    return {"name": name, "fraction_evaluate": fraction, "params": params}
