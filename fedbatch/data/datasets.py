"""The small offline datasets, as numpy arrays with a held-out test split.

- `digits`: scikit-learn's bundled 8x8 digits (1797 samples, 64 features in [0, 1]);
  stratified test split. `num_samples` is ignored.
- `mnist1d`: MNIST-1D generated locally with `mnist1d.data.make_dataset` (never
  downloaded); 40 features standardised with the training mean and std. The generator
  makes `num_samples // 10` samples per class, so the total is rounded down to a
  multiple of 10.
- `synthetic`: Synthetic(alpha, beta) of LEAF / FedProx, pooled over `num_sources`
  sources of equal size (±1). As in the reference code, alpha and beta are the standard
  deviations of u_k and B_k. Then a seeded random test split.
- `images`: CIFAR-shaped synthetic images (3×32×32, `num_classes` classes): each class
  has a smooth random template (4×4 noise upsampled); a sample is its class template,
  translated by up to 4 pixels each way, plus pixel noise of σ = 1.5. The templates' scale
  is `signal` (default 1: easy); smaller values make the classes harder to tell apart.
  A stand-in for image benchmarks, generated in a second; seeded random test split.

Test sets hold ceil(test_fraction · n) samples (digits, synthetic, images) or
n - int(n · (1 - test_fraction)) (mnist1d, the generator's own rule).

`load_dataset` is cached per process; the arrays it returns are read-only (index them to
get a writable copy, or use `torch.tensor` rather than `torch.from_numpy`). Each dataset
is a function `(cfg, seed) -> (x_train, y_train, x_test, y_test, num_classes)` named in
`fedbatch.registry.DATASETS`; the user's own (`data=hf`, `data=arrays`: `files.py`) also
return the training samples' natural ids when `data.ids` names a column.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from fedbatch.config import DataConfig
from fedbatch.config.schema import ignored
from fedbatch.registry import DATASETS


@dataclass(frozen=True)
class Dataset:
    """A train/test split; x float32 of shape (n, *input_shape), y int64 of shape (n,);
    for text (`fedbatch.data.text`) x and y are int64 token rows of shape (n, length)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    # Per training sample, the code of its natural id (data.ids), for partition=natural.
    train_ids: np.ndarray | None = None
    # The user's own data: the label each class index stands for (None: the index itself).
    class_values: tuple[Any, ...] | None = None


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """The dataset `cfg` names, split with `seed` (same arguments, same arrays)."""
    DATASETS.resolve(cfg.name)  # an unknown name: ConfigError
    return _load_cached(_relevant(cfg), seed)


def _relevant(cfg: DataConfig) -> DataConfig:
    """Reset the keys the dataset ignores (the schema's `only`), so they do not split the
    cache."""
    return replace(cfg, **ignored(cfg))


@lru_cache(maxsize=8)
def _load_cached(cfg: DataConfig, seed: int) -> Dataset:
    x_train, y_train, x_test, y_test, num_classes, *extra = DATASETS.resolve(cfg.name)(cfg, seed)
    ids, values = (*extra, None, None)[:2]
    return Dataset(
        name=cfg.name,
        x_train=_frozen(x_train, _input_dtype(x_train)),
        y_train=_frozen(y_train, np.int64),
        x_test=_frozen(x_test, _input_dtype(x_test)),
        y_test=_frozen(y_test, np.int64),
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        train_ids=_frozen(ids, np.int64) if ids is not None else None,
        class_values=values,
    )


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


def _input_dtype(x: np.ndarray) -> type:
    """Token ids (text) stay int64; features are float32."""
    return np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32


def _frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    """A read-only C-contiguous array of `dtype`, copied only when it is not one already
    (large image sets would otherwise exist twice while loading)."""
    out = np.ascontiguousarray(array, dtype=dtype)
    if out is array and (array.base is not None or not array.flags.owndata):
        out = out.copy()  # never freeze a view of someone else's array
    out.flags.writeable = False
    return out


def _seed32(seed: int) -> int:
    """Libraries seeded through legacy numpy take 32-bit seeds only."""
    return seed % 2**32


def digits(cfg: DataConfig, seed: int) -> Arrays:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=cfg.test_fraction, stratify=y, random_state=_seed32(seed)
    )
    return x_train, y_train, x_test, y_test, 10


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """mnist1d seeds `random` and `np.random` globally; put both back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def mnist1d(cfg: DataConfig, seed: int) -> Arrays:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = cfg.num_samples
    args.train_split = 1.0 - cfg.test_fraction
    args.seed = _seed32(seed)
    with _global_rng_preserved():
        data = make_dataset(args)
    x_train, x_test = data["x"], data["x_test"]
    mean = x_train.mean(axis=0)
    std = np.maximum(x_train.std(axis=0), 1e-8)
    return (x_train - mean) / std, data["y"], (x_test - mean) / std, data["y_test"], 10


def synthetic(cfg: DataConfig, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    d, c = cfg.num_features, cfg.num_classes
    std_x = np.arange(1, d + 1, dtype=np.float64) ** -0.6  # Σ_jj = j^-1.2
    sizes = np.full(cfg.num_sources, cfg.num_samples // cfg.num_sources)
    sizes[: cfg.num_samples % cfg.num_sources] += 1
    xs, ys = [], []
    for size in sizes:
        u, b_mean = rng.normal(0.0, cfg.alpha), rng.normal(0.0, cfg.beta)
        w = rng.normal(u, 1.0, size=(d, c))
        b = rng.normal(u, 1.0, size=c)
        v = rng.normal(b_mean, 1.0, size=d)
        x = v + std_x * rng.standard_normal((size, d))
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1))  # argmax of softmax = argmax of logits
    return *_random_split(np.concatenate(xs), np.concatenate(ys), cfg, rng), c


def _random_split(
    x_all: np.ndarray, y_all: np.ndarray, cfg: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test arrays; the test set is a seeded random ceil(test_fraction · n)."""
    train, test = held_out(len(y_all), cfg.test_fraction, rng)
    return x_all[train], y_all[train], x_all[test], y_all[test]


def held_out(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: the test set is a seeded random ceil(fraction · n)."""
    order = rng.permutation(n)
    n_test = min(math.ceil(fraction * n), n - 1)
    return order[n_test:], order[:n_test]


def images(cfg: DataConfig, seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    coarse = cfg.signal * rng.standard_normal((cfg.num_classes, 3, 4, 4), dtype=np.float32)
    templates = np.kron(coarse, np.ones((8, 8), dtype=np.float32))  # smooth 3×32×32
    y = rng.integers(0, cfg.num_classes, size=cfg.num_samples)
    x = templates[y]
    shifts = rng.integers(-4, 5, size=(cfg.num_samples, 2))  # random translations
    for dy, dx in np.unique(shifts, axis=0):
        moved = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
        x[moved] = np.roll(x[moved], (dy, dx), axis=(2, 3))
    for start in range(0, cfg.num_samples, 4096):  # noise in chunks: no second full copy
        chunk = x[start : start + 4096]
        chunk += 1.5 * rng.standard_normal(chunk.shape, dtype=np.float32)
    return *_random_split(x, y, cfg, rng), cfg.num_classes
