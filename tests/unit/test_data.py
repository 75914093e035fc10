"""Datasets and partitions: shapes, splits, determinism and the skew each scheme makes."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pytest
from flwr_datasets.partitioner import IidPartitioner

from fedbatch.config import DATASETS, ConfigError, DataConfig, PartitionConfig
from fedbatch.config.schema import validate
from fedbatch.data import datasets as fb_datasets
from fedbatch.data import partition as fb_partition
from fedbatch.data.datasets import load_dataset
from fedbatch.data.partition import partition_indices

SMALL = {
    "digits": DataConfig(name="digits"),
    "mnist1d": DataConfig(name="mnist1d", num_samples=200),
    "synthetic": DataConfig(name="synthetic", num_samples=300, num_features=7, num_classes=3),
    "images": DataConfig(name="images", num_samples=200, num_classes=4),
}
INPUT_SHAPES = {"digits": (64,), "mnist1d": (40,), "synthetic": (7,), "images": (3, 32, 32)}
NUM_CLASSES = {"digits": 10, "mnist1d": 10, "synthetic": 3, "images": 4}


def _fresh(cfg: DataConfig, seed: int) -> fb_datasets.Dataset:
    fb_datasets._load_cached.cache_clear()
    return load_dataset(cfg, seed)


def _entropy(labels: np.ndarray, num_classes: int) -> float:
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def digit_labels() -> np.ndarray:
    return load_dataset(DataConfig(name="digits"), 0).y_train


# --- datasets ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_shapes_dtypes_and_classes(name: str) -> None:
    ds = load_dataset(SMALL[name], 0)
    assert ds.name == name
    assert ds.input_shape == INPUT_SHAPES[name]
    assert ds.num_classes == NUM_CLASSES[name]
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), *ds.input_shape)
        assert y.min() >= 0 and y.max() < ds.num_classes
        assert np.isfinite(x).all()
        assert not x.flags.writeable and not y.flags.writeable


@pytest.mark.parametrize(
    ("cfg", "n_train", "n_test"),
    [
        (DataConfig(name="digits", test_fraction=0.2), 1797 - 360, 360),
        (DataConfig(name="mnist1d", num_samples=205, test_fraction=0.25), 150, 50),
        (DataConfig(name="synthetic", num_samples=500, test_fraction=0.3), 350, 150),
    ],
)
def test_test_split_size(cfg: DataConfig, n_train: int, n_test: int) -> None:
    ds = load_dataset(cfg, 0)
    assert (len(ds.y_train), len(ds.y_test)) == (n_train, n_test)


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_arrays_other_seed_other_arrays(name: str) -> None:
    first, again, other = _fresh(SMALL[name], 3), _fresh(SMALL[name], 3), _fresh(SMALL[name], 4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.x_train, other.x_train)


def test_cache_returns_the_same_object_and_ignores_unused_fields() -> None:
    a = load_dataset(DataConfig(name="digits"), 0)
    assert load_dataset(DataConfig(name="digits"), 0) is a
    assert load_dataset(DataConfig(name="digits", num_samples=99, alpha=3.0), 0) is a


def test_digits_scaled_and_stratified() -> None:
    ds = load_dataset(DataConfig(name="digits"), 0)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    train = np.bincount(ds.y_train) / len(ds.y_train)
    test = np.bincount(ds.y_test) / len(ds.y_test)
    assert np.abs(train - test).max() < 0.01


def test_mnist1d_standardised_with_train_stats_and_global_rng_untouched() -> None:
    np.random.seed(123)
    expected = np.random.get_state()[1].copy()
    ds = _fresh(DataConfig(name="mnist1d", num_samples=300), 0)
    np.testing.assert_array_equal(np.random.get_state()[1], expected)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-4)
    assert not np.allclose(ds.x_test.mean(axis=0), 0.0, atol=1e-5)


def test_synthetic_feature_variance_follows_sigma() -> None:
    cfg = DataConfig(name="synthetic", num_samples=6000, num_sources=1, num_features=10)
    x = load_dataset(cfg, 0).x_train
    expected = np.arange(1, 11) ** -1.2
    np.testing.assert_allclose(x.var(axis=0), expected, rtol=0.1)


def test_synthetic_one_source_is_linear_many_sources_are_not() -> None:
    from sklearn.linear_model import LogisticRegression

    def train_accuracy(num_sources: int) -> float:
        cfg = DataConfig(
            name="synthetic",
            num_samples=2000,
            num_sources=num_sources,
            num_features=20,
            num_classes=5,
        )
        ds = load_dataset(cfg, 0)
        model = LogisticRegression(C=100.0, max_iter=3000).fit(ds.x_train, ds.y_train)
        return float(model.score(ds.x_train, ds.y_train))

    assert train_accuracy(1) > 0.98  # y = argmax(x W + b): linearly separable
    assert train_accuracy(30) < 0.9  # 30 different (W_k, b_k) pooled


def test_images_are_class_templates_under_noise() -> None:
    ds = load_dataset(DataConfig(name="images", num_samples=2000, num_classes=4), 0)
    x = ds.x_train.reshape(len(ds.x_train), -1)
    means = np.stack([x[ds.y_train == k].mean(axis=0) for k in range(4)])
    # class means differ (templates), and the pixel noise has the documented scale
    assert np.abs(means[0] - means[1]).mean() > 0.1
    residual = x - means[ds.y_train]
    assert 1.5 <= residual.std() <= 2.0  # noise 1.5, plus the spread from translations


def test_image_signal_scales_the_templates_only() -> None:
    """Same seed: the same translations and noise, templates × signal. So the difference
    between signals 1 and 0.5 is twice the one between 0.5 and 0.25."""

    def images(signal: float) -> np.ndarray:
        cfg = DataConfig(name="images", num_samples=300, num_classes=4, signal=signal)
        return load_dataset(cfg, 0).x_train.astype(np.float64)

    full, half, quarter = images(1.0), images(0.5), images(0.25)
    np.testing.assert_allclose(full - half, 2 * (half - quarter), atol=1e-5)
    assert np.abs(full - half).mean() > 0.1


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        validate(DataConfig, {"name": "cifar10"}, "data")
    assert str(info.value) == "data='cifar10' is invalid: allowed one of " + ", ".join(DATASETS)


# --- partitions -------------------------------------------------------------------------

SCHEMES = [
    PartitionConfig(name="iid"),
    PartitionConfig(name="dirichlet", alpha=0.5, min_partition_size=5),
    PartitionConfig(name="shards", shards_per_client=2),
    PartitionConfig(name="quantity", alpha=0.5, min_partition_size=5),
]


@pytest.mark.parametrize("cfg", SCHEMES, ids=lambda c: c.name)
def test_partitions_are_disjoint_sorted_and_cover_everything(
    cfg: PartitionConfig, digit_labels: np.ndarray
) -> None:
    parts = partition_indices(digit_labels, cfg, 10, 0)
    assert len(parts) == 10
    for part in parts:
        assert part.dtype == np.int64 and len(part) > 0
        assert np.all(np.diff(part) > 0)
    everything = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(everything), np.arange(len(digit_labels)))


@pytest.mark.parametrize("cfg", SCHEMES, ids=lambda c: c.name)
def test_partitions_deterministic_per_seed(cfg: PartitionConfig, digit_labels: np.ndarray) -> None:
    fb_partition._partition_cached.cache_clear()
    first = partition_indices(digit_labels, cfg, 10, 1)
    fb_partition._partition_cached.cache_clear()
    again = partition_indices(digit_labels, cfg, 10, 1)
    other = partition_indices(digit_labels, cfg, 10, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(("k", "seed"), [(7, 5), (10, 0), (1437, 3)])
def test_iid_sizes_balanced_and_equal_to_iid_partitioner(
    digit_labels: np.ndarray, k: int, seed: int
) -> None:
    # fedbatch splits iid in numpy (no Hugging Face import); the library's split must agree
    n = len(digit_labels)
    parts = partition_indices(digit_labels, PartitionConfig(name="iid"), k, seed)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    table = datasets.Dataset.from_dict({"idx": np.arange(n), "label": digit_labels})
    reference = IidPartitioner(num_partitions=k)
    reference.dataset = table.shuffle(seed=fb_partition._subseed(seed, fb_partition._SHUFFLE))
    for i in sorted({0, 3, k // 2, k - 2, k - 1}):
        np.testing.assert_array_equal(parts[i], np.sort(reference.load_partition(i)["idx"]))


def test_iid_partitions_are_label_balanced(digit_labels: np.ndarray) -> None:
    parts = partition_indices(digit_labels, PartitionConfig(name="iid"), 5, 0)
    entropies = [_entropy(digit_labels[p], 10) for p in parts]
    assert min(entropies) > 0.95 * math.log(10)


def test_dirichlet_small_alpha_is_more_label_skewed(digit_labels: np.ndarray) -> None:
    def mean_entropy(alpha: float) -> float:
        cfg = PartitionConfig(name="dirichlet", alpha=alpha, min_partition_size=2)
        parts = partition_indices(digit_labels, cfg, 10, 0)
        return float(np.mean([_entropy(digit_labels[p], 10) for p in parts]))

    skewed, mild, flat = mean_entropy(0.1), mean_entropy(1.0), mean_entropy(100.0)
    assert skewed < mild < flat
    assert flat > 0.95 * math.log(10) and skewed < 0.6 * math.log(10)


def test_shards_give_few_labels_per_client(digit_labels: np.ndarray) -> None:
    # 1437 rows, 10 clients x 2 shards: shard size 72, each client exactly 2 shards
    # (the last one 69 rows). A shard of label-sorted rows spans at most 2 labels.
    parts = partition_indices(digit_labels, PartitionConfig(name="shards"), 10, 0)
    assert sorted(len(p) for p in parts) == [141] + [144] * 9
    distinct = [len(np.unique(digit_labels[p])) for p in parts]
    assert max(distinct) <= 4 and np.mean(distinct) <= 3


def test_shards_use_all_rows_when_the_count_does_not_divide() -> None:
    labels = np.repeat(np.arange(10), 103)  # 1030 rows, 30 clients x 3 shards
    cfg = PartitionConfig(name="shards", shards_per_client=3)
    parts = partition_indices(labels, cfg, 30, 0)
    assert sum(len(p) for p in parts) == len(labels)
    assert max(len(np.unique(labels[p])) for p in parts) <= 2 * 4


def test_quantity_sizes_unequal_at_least_min_and_labels_mixed(digit_labels: np.ndarray) -> None:
    cfg = PartitionConfig(name="quantity", alpha=0.5, min_partition_size=20)
    parts = partition_indices(digit_labels, cfg, 10, 0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 20 and sizes.sum() == len(digit_labels)
    assert sizes.max() > 3 * sizes.min()
    biggest = parts[int(sizes.argmax())]
    assert _entropy(digit_labels[biggest], 10) > 0.95 * math.log(10)


def test_many_clients_is_fast_enough() -> None:
    labels = np.random.default_rng(0).integers(0, 10, 20_000)
    parts = partition_indices(labels, PartitionConfig(name="iid"), 10_000, 0)
    assert len(parts) == 10_000 and {len(p) for p in parts} == {2}


def test_cached_results_cannot_be_changed(digit_labels: np.ndarray) -> None:
    cfg = PartitionConfig(name="iid")
    first = partition_indices(digit_labels, cfg, 4, 0)
    with pytest.raises(ValueError, match="read-only"):
        first[0][0] = -1
    with pytest.raises(ValueError, match="read-only"):
        first.offsets[1] = 0
    second = partition_indices(digit_labels, cfg, 4, 0)
    assert len(second) == 4 and min(second[0]) >= 0 and not second[0].flags.writeable


MIN_SIZE = "partition.min_partition_size"


@pytest.mark.parametrize(
    ("cfg", "num_partitions", "key"),
    [
        (PartitionConfig(name="iid"), 2000, "num_clients"),
        (
            PartitionConfig(name="dirichlet", min_partition_size=200),
            10,
            "partition.min_partition_size",
        ),
        (
            PartitionConfig(name="quantity", min_partition_size=200),
            10,
            "partition.min_partition_size",
        ),
        (PartitionConfig(name="shards", shards_per_client=200), 10, "partition.shards_per_client"),
    ],
)
def test_impossible_requests_are_config_errors(
    cfg: PartitionConfig, num_partitions: int, key: str, digit_labels: np.ndarray
) -> None:
    with pytest.raises(ConfigError) as info:
        partition_indices(digit_labels, cfg, num_partitions, 0)
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_dirichlet_that_the_library_cannot_satisfy_is_a_config_error() -> None:
    labels = np.repeat(np.arange(10), 10)
    cfg = PartitionConfig(name="dirichlet", alpha=0.05, min_partition_size=2)
    with pytest.raises(ConfigError) as info:
        partition_indices(labels, cfg, 40, 0)
    assert info.value.key == "partition.alpha"
