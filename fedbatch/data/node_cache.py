"""A node's prepared data on disk: the dataset and its partitions, built once per node.

A deployed SuperNode starts a fresh ClientApp process for every message, and each would
regenerate the whole dataset and partition it again (importing the generators' libraries
on the way). With a cache directory (a SuperNode's `data-cache` node config) the first
process writes what it built to one `.npz` file, named by a hash of everything that
decides the data (the `data` and `partition` sections, `seed`, `num_clients`, the
format); later processes load it. Loaded arrays are bit-identical to built ones. The file
is written to a temporary name and renamed, so a reader never sees half of one; one that
cannot be read back (truncated, corrupt: the zip's CRC-32 checks every member) is rebuilt.
Only the built-in generated datasets are cached: the user's own files (`hf`, `arrays`,
`text` with a `data.path`) can change under the same config.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from fedbatch.config import RunConfig
from fedbatch.data.datasets import Dataset
from fedbatch.data.partition_table import PartitionTable

Prepared = tuple[Dataset, PartitionTable]
GENERATED = ("synthetic", "mnist1d", "digits", "images", "text")
FORMAT = 2  # bump when the file's layout or the generators' output changes
KEYS = ("data", "partition", "seed", "num_clients")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def cache_key(cfg: RunConfig) -> str:
    """The hash of everything that decides a run's dataset and partitions."""
    config = json.loads(cfg.to_json())
    decides = {key: config[key] for key in KEYS}
    decides |= {"format": FORMAT, "fedbatch": _version()}
    text = json.dumps(decides, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _version() -> str:
    try:
        return version("fedbatch")
    except PackageNotFoundError:  # run from a source tree
        return "unknown"


def cache_file(cfg: RunConfig, directory: Path) -> Path:
    return directory / f"data-{cache_key(cfg)}.npz"


def cacheable(cfg: RunConfig) -> bool:
    """Generated data only: `data=text` with a `data.path` reads a file that can change."""
    return cfg.data.name in GENERATED and cfg.data.path is None


def save(path: Path, dataset: Dataset, partitions: PartitionTable) -> None:
    """Write `dataset` and `partitions` to `path` atomically."""
    meta = {
        "name": dataset.name,
        "num_classes": dataset.num_classes,
        "input_shape": list(dataset.input_shape),
        "class_values": dataset.class_values,
    }
    arrays = {name: getattr(dataset, name) for name in ARRAYS}
    if dataset.train_ids is not None:
        arrays["train_ids"] = dataset.train_ids
    arrays["partition_offsets"] = partitions.offsets
    arrays["partition_indices"] = partitions.indices
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path) -> Prepared | None:
    """The dataset and partitions in `path`, or None when it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = {name: file[name] for name in file.files}
        meta = json.loads(str(arrays.pop("meta")))
        partitions = PartitionTable(
            arrays.pop("partition_indices"), arrays.pop("partition_offsets")
        )
        class_values = meta["class_values"]
        dataset = Dataset(
            name=meta["name"],
            **{name: arrays[name] for name in ARRAYS},
            num_classes=int(meta["num_classes"]),
            input_shape=tuple(meta["input_shape"]),
            train_ids=arrays.get("train_ids"),
            class_values=None if class_values is None else tuple(class_values),
        )
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    rows = len(dataset.x_train)
    if (
        len(partitions.indices)
        and not 0 <= partitions.indices.min() <= partitions.indices.max() < rows
    ):
        return None
    for array in arrays.values():
        array.setflags(write=False)  # as `load_dataset` returns them
    return dataset, partitions


def prepared_data(
    cfg: RunConfig, directory: Path | None, build: Callable[[], Prepared]
) -> Prepared:
    """`build()`'s dataset and partitions, through the cache in `directory` (if any)."""
    if directory is None or not cacheable(cfg):
        return build()
    path = cache_file(cfg, directory)
    found = load(path)
    if found is not None:
        return found
    dataset, partitions = build()
    try:
        save(path, dataset, partitions)
    except OSError as error:  # a full or read-only disk costs speed, not the run
        warnings.warn(f"data-cache: could not write {path}: {error}", stacklevel=2)
    return dataset, partitions
