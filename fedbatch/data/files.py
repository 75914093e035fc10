"""The user's own data as the same arrays the built-ins give: `data=hf` and `data=arrays`.

- `hf`: a Hugging Face dataset (`hub.open_splits`: local files, an arrow directory, an
  image folder, or a Hub id). Features are `data.features` (empty: every column but the
  label and the natural id): numeric columns (scalars or fixed-length lists), side by
  side, or one image column, as float (C, H, W) scaled to [0, 1]. The test set is
  `data.test_split`, or a seeded held-out `data.test_fraction` of `data.split`.
- `arrays`: a .npz file (numpy) or .pt file (a dict of tensors, loaded with
  `weights_only=True`) holding `x`, `y` and optionally `x_test`, `y_test`; any other
  array of one value per training sample can name the natural partition's ids.

Labels may be integers (kept: class i is i; a ClassLabel column keeps its class count),
strings, booleans or negative integers (class indices in sorted order). `data.normalize`
standardises each feature (an image: each channel) with the training mean and std.
Arrays are converted column-wise, once per process (`load_dataset`'s cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedbatch.checks import ConfigError
from fedbatch.config import DataConfig
from fedbatch.data.datasets import held_out
from fedbatch.registry import one_line

LABELS = "a column of class labels (integers, strings or booleans)"
ARRAY_FILES = (".npz", ".pt")


def hf(cfg: DataConfig, seed: int) -> tuple[Any, ...]:
    import datasets

    from fedbatch.data.hub import open_splits, split

    splits = open_splits(cfg.path)
    train = split(splits, "data.split", cfg.split)
    test = split(splits, "data.test_split", cfg.test_split) if cfg.test_split else None
    columns = list(train.column_names)
    _has_column(columns, "data.label", cfg.label)
    if cfg.ids is not None:
        _has_column(columns, "partition.by", cfg.ids)
    y = _labels(train, cfg.label, cfg.split)
    class_indices(y, y[:0])  # a label column that is no class label: before the features
    features = list(cfg.features) or [c for c in columns if c not in (cfg.label, cfg.ids)]
    for name in features:
        _has_column(columns, "data.features", name)
    if not features:
        raise ConfigError("data.features", [], f"columns besides the label, of {columns}")
    label_type = train.features[cfg.label]
    classes = label_type.num_classes if isinstance(label_type, datasets.ClassLabel) else None
    ids = _column(train, cfg.ids) if cfg.ids is not None else None
    given = None
    if test is not None:
        given = (
            _features(test, features, cfg.test_split),
            _labels(test, cfg.label, cfg.test_split),
        )
    x = _features(train, features, cfg.split)
    split_arrays = _train_test(x, y, ids, given, cfg.test_fraction, seed)
    return _finish(cfg, *split_arrays, classes)


def arrays(cfg: DataConfig, seed: int) -> tuple[Any, ...]:
    found = _read_arrays(cfg.path)
    if "x" not in found or "y" not in found or ("x_test" in found) != ("y_test" in found):
        held = ", ".join(sorted(found)) or "nothing"
        raise ConfigError(
            "data.path", cfg.path, f"a file with arrays x and y, optionally x_test and y_test "
            f"(it holds {held})"
        )  # fmt: skip
    x, y = found["x"], found["y"]
    if len(x) != len(y) or y.ndim != 1:
        raise ConfigError("data.path", cfg.path, f"y of shape ({len(x)},) for x of {x.shape}")
    ids = None
    if cfg.ids is not None:
        ids = found.get(cfg.ids)
        if ids is None or ids.shape != y.shape:
            same = [k for k, v in found.items() if v.shape == y.shape and k != "y"]
            raise ConfigError("partition.by", cfg.ids, f"one of the file's arrays {same}")
    given = (found["x_test"], found["y_test"]) if "x_test" in found else None
    return _finish(cfg, *_train_test(x, y, ids, given, cfg.test_fraction, seed), None)


def _read_arrays(path: str | None) -> dict[str, np.ndarray]:
    place = Path(path) if path else None
    if place is None or not place.is_file() or place.suffix.lower() not in ARRAY_FILES:
        why = "no such file" if place is not None and not place.exists() else "another format"
        raise ConfigError("data.path", path, f"a .npz or .pt file ({why})")
    try:
        if place.suffix.lower() == ".npz":
            with np.load(place, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        import torch

        loaded = torch.load(place, map_location="cpu", weights_only=True)
    except Exception as error:
        allowed = f"a readable .npz or .pt ({one_line(error)})"
        raise ConfigError("data.path", path, allowed) from None
    if not isinstance(loaded, dict):
        raise ConfigError("data.path", path, "a .pt file holding a dict of tensors")
    return {str(k): np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in loaded.items()}


def _has_column(columns: list[str], key: str, name: str) -> None:
    if name not in columns:
        raise ConfigError(key, name, "one of the columns " + ", ".join(columns))


def _column(table: Any, name: str) -> np.ndarray:
    return np.asarray(table.with_format("numpy", columns=[name])[:][name])


def missing(values: np.ndarray) -> int:
    """How many of `values` are null (None in an object column) or NaN."""
    if values.dtype.kind == "f":
        return int(np.isnan(values).sum())
    if values.dtype == object:
        return sum(v is None or (isinstance(v, float) and v != v) for v in values.ravel())
    return 0


def _require(table: Any, name: str, key: str, split_name: str) -> None:
    if name not in table.column_names:
        raise ConfigError(key, name, f"a column of every split (the {split_name} split has no "
                          f"column {name!r}; it has {', '.join(table.column_names)})")  # fmt: skip


def _present(table: Any, name: str, key: str, split_name: str) -> np.ndarray:
    """Column `name` of the split, refused in one line naming `key` when the split lacks
    it or holds missing values in it (they would otherwise become a class or a number)."""
    _require(table, name, key, split_name)
    values = _column(table, name)
    count = missing(values)
    if count and count == len(values):  # a file of a split lacks it: read as all null
        raise ConfigError(key, name, f"a column of every split (the {split_name} split has "
                          f"no column {name!r}: all {count} values missing)")  # fmt: skip
    if count:
        raise ConfigError(key, name, f"a column without missing values (column {name!r} has "
                          f"{count} missing values in split {split_name})")  # fmt: skip
    return values


def _labels(table: Any, name: str, split_name: str) -> np.ndarray:
    return _present(table, name, "data.label", split_name)


def _features(table: Any, names: list[str], split_name: str) -> np.ndarray:
    """(n, d) floats from numeric columns, or (n, C, H, W) floats in [0, 1] from images."""
    import datasets

    for name in names:
        _require(table, name, "data.features", split_name)

    images = [n for n in names if isinstance(table.features[n], datasets.Image)]
    if images and len(names) > 1:
        raise ConfigError("data.features", names, "numeric columns or one image column")
    if images:
        pixels = _present(table, images[0], "data.features", split_name)
        if pixels.dtype == object:
            raise ConfigError("data.features", images[0], "an image column of one size")
        pixels = pixels[:, None] if pixels.ndim == 3 else np.moveaxis(pixels, -1, 1)
        return pixels.astype(np.float32) / 255.0
    columns = []
    for name in names:
        values = _present(table, name, "data.features", split_name)
        if values.dtype.kind not in "biuf":
            allowed = f"numeric columns or one image column ({name!r} holds {values.dtype})"
            raise ConfigError("data.features", name, allowed)
        columns.append(values.reshape(len(values), -1).astype(np.float32))
    return np.concatenate(columns, axis=1)


Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]


def _train_test(
    x: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray | None,
    given: tuple[np.ndarray, np.ndarray] | None,
    fraction: float,
    seed: int,
) -> Split:
    """x, y, x_test, y_test, ids: the test set `given`, else a seeded held-out fraction."""
    if given is not None:
        return x, y, *given, ids
    train, test = held_out(len(y), fraction, np.random.default_rng(seed))
    return x[train], y[train], x[test], y[test], None if ids is None else ids[train]


def class_indices(
    y_train: np.ndarray, y_test: np.ndarray, classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels as class indices and their count: non-negative integers as they are,
    anything else (strings, booleans, negative integers) by its rank in sorted order."""
    train, test, count, _ = labelled(y_train, y_test, classes)
    return train, test, count


def labelled(
    y_train: np.ndarray, y_test: np.ndarray, classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int, tuple[Any, ...] | None]:
    """`class_indices`, and the label each index stands for (None: the integer itself)."""
    y_all = np.concatenate([y_train, y_test])
    if y_all.dtype.kind == "f":
        if not np.all(np.isfinite(y_all) & (y_all == np.round(y_all))):
            fractional = y_all[y_all != np.round(y_all)][:1].tolist()
            raise ConfigError("data.label", f"values like {fractional}", LABELS)
        y_all = y_all.astype(np.int64)
    if y_all.dtype.kind not in "iubUSO":
        raise ConfigError("data.label", str(y_all.dtype), LABELS)
    values: tuple[Any, ...] | None = None
    if y_all.dtype.kind in "iu" and (len(y_all) == 0 or y_all.min() >= 0):
        codes, count = y_all.astype(np.int64), int(y_all.max()) + 1
    else:
        unique, codes = np.unique(y_all.astype(str) if y_all.dtype == object else y_all,
                                  return_inverse=True)  # fmt: skip
        count, values = len(unique), tuple(unique.tolist())
    count = max(count, classes or 0)
    if count < 2:
        raise ConfigError("data.label", f"{count} class", LABELS + " with at least 2 classes")
    return codes[: len(y_train)], codes[len(y_train) :], count, values


def _finish(
    cfg: DataConfig,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    ids: np.ndarray | None,
    classes: int | None,
) -> tuple[Any, ...]:
    """Class indices, float32 samples (standardised with data.normalize), id codes, and
    the label of each class index (None: integer labels, each its own index)."""
    if x.shape[1:] != x_test.shape[1:]:
        raise ConfigError("data.path", cfg.path, f"train and test samples of one shape, "
                          f"not {x.shape[1:]} and {x_test.shape[1:]}")  # fmt: skip
    y, y_test, num_classes, values = labelled(y, y_test, classes)
    x, x_test = np.asarray(x, dtype=np.float32), np.asarray(x_test, dtype=np.float32)
    if cfg.normalize:
        axes = (0, *range(2, x.ndim))  # per feature, or per channel of (n, C, H, W)
        mean = x.mean(axis=axes, keepdims=True)
        std = np.maximum(x.std(axis=axes, keepdims=True), 1e-8)
        x, x_test = (x - mean) / std, (x_test - mean) / std
    if ids is not None:
        ids = np.unique(ids.astype(str) if ids.dtype == object else ids, return_inverse=True)[1]
    return x, y, x_test, y_test, num_classes, ids, values
