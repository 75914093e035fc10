"""Sizes that cannot fit, estimated before anything is allocated: a generated dataset
from its sample and feature counts, a model on torch's meta device (shapes, no memory).
So `model.hidden=[100000,100000]` or `data.num_samples=10**12` is one line, not a
MemoryError mid-run."""

from __future__ import annotations

import os

import torch

from fedbatch.checks import ConfigError
from fedbatch.config import RunConfig
from fedbatch.local.models import build_model

# Bytes per parameter a client holds at the least: fp32 weights, gradients, and the
# optimizer's state (Adam: two moments), beside the server's copy of the global model.
BYTES_PER_PARAMETER = 4 * 5
SIZE_KEYS = {"mlp": "hidden", "cnn": "channels", "cnn1d": "channels"}  # what sets the size
SIZE_KEYS |= {"resnet": "channels", "gru": "width", "transformer": "width"}
# Features per sample of the generated built-in datasets (synthetic: data.num_features);
# each value is generated in float64 and kept in float32.
FEATURES = {"mnist1d": 40, "images": 3 * 32 * 32}
BYTES_PER_VALUE = 8 + 4


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parameter_count(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> int:
    with torch.device("meta"):
        model = build_model(cfg.model, input_shape, num_classes)
    return sum(p.numel() for p in model.parameters())


def check_model_fits(
    cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, memory: int | None = None
) -> None:
    """ConfigError naming the model's size key when its training state exceeds `memory`
    (default: this machine's)."""
    if cfg.model.target is not None:  # a class of the user's: built (and sized) for real
        return
    parameters = parameter_count(cfg, input_shape, num_classes)
    needed, memory = parameters * BYTES_PER_PARAMETER, memory or physical_memory()
    if needed <= memory:
        return
    size = SIZE_KEYS.get(cfg.model.name)
    key = f"model.{size}" if size else "model"
    value = getattr(cfg.model, size) if size else cfg.model.name
    value = list(value) if isinstance(value, tuple) else value
    raise ConfigError(
        key,
        value,
        f"a model that fits in memory: {parameters:,} parameters need at least "
        f"{needed / 2**30:.1f} GiB to train, this machine has {memory / 2**30:.1f} GiB",
    )


def check_data_fits(cfg: RunConfig, memory: int | None = None) -> None:
    """ConfigError on `data.num_samples` when generating the dataset would exceed `memory`
    (default: this machine's); datasets of fixed size or of the user's are not sized."""
    data = cfg.data
    features = data.num_features if data.name == "synthetic" else FEATURES.get(data.name)
    if data.name == "text" and data.path is None:  # input and target rows of the corpus
        from fedbatch.data.text import LONGEST_GENERATED

        width = min(data.max_length, LONGEST_GENERATED) + 1
        pieces = -(-(LONGEST_GENERATED + 1) // width)  # rows of a sentence cut into pieces
        features = 2 * pieces * width
    if features is None:
        return
    memory = memory or physical_memory()
    if data.num_samples * features * BYTES_PER_VALUE <= memory:
        return
    most = memory // (features * BYTES_PER_VALUE)
    raise ConfigError(
        "data.num_samples",
        data.num_samples,
        f"at most {most:,} for data={data.name} in this machine's {memory / 2**30:.1f} GiB "
        f"({features} features a sample)",
    )
