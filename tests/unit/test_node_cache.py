"""A node's on-disk data cache: a hit is bit-identical to building, a changed config
misses, and a damaged file is rebuilt."""

from __future__ import annotations

import numpy as np
import torch

from fedbatch.data.datasets import load_dataset
from fedbatch.data.node_cache import cache_file, prepared_data
from fedbatch.data.partition import partition_indices
from fedbatch.data.text import partition_labels
from fedbatch.federated.workload import build_workload
from tests.conftest import tiny_config


def skewed(**overrides):
    return tiny_config(
        data={"name": "synthetic", "num_samples": 400},
        partition={"name": "dirichlet", "alpha": 0.3},
        **overrides,
    )


class Builds:
    """Builds the data as a run does, counting the calls."""

    def __init__(self, cfg):
        self.cfg, self.calls = cfg, 0

    def __call__(self):
        self.calls += 1
        dataset = load_dataset(self.cfg.data, self.cfg.seed)
        labels = partition_labels(dataset.y_train)
        parts = partition_indices(
            labels, self.cfg.partition, self.cfg.num_clients, self.cfg.seed, dataset.train_ids
        )
        return dataset, parts


def assert_same(first, second):
    (data_a, parts_a), (data_b, parts_b) = first, second
    for name in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(data_a, name), getattr(data_b, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # bit-identical, NaN payloads included
    assert (data_a.num_classes, data_a.input_shape) == (data_b.num_classes, data_b.input_shape)
    assert len(parts_a) == len(parts_b)
    for a, b in zip(parts_a, parts_b, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_hit_loads_what_was_built_without_building(tmp_path):
    cfg = skewed()
    builds = Builds(cfg)
    built = prepared_data(cfg, tmp_path, builds)
    assert builds.calls == 1 and cache_file(cfg, tmp_path).is_file()
    assert len({len(p) for p in built[1]}) > 1  # unequal partitions survive the round trip
    loaded = prepared_data(cfg, tmp_path, builds)
    assert builds.calls == 1
    assert_same(loaded, Builds(cfg)())


def test_a_workload_from_the_cache_has_the_same_tensors(tmp_path):
    cfg = skewed()
    build_workload(cfg, tmp_path)  # writes the cache
    cached, fresh = build_workload(cfg, tmp_path), build_workload(cfg)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(cached, name), getattr(fresh, name))
    for partition in range(cfg.num_clients):
        x_cached, y_cached = cached.client_data(partition)
        x_fresh, y_fresh = fresh.client_data(partition)
        assert torch.equal(x_cached, x_fresh) and torch.equal(y_cached, y_fresh)


def test_a_changed_data_config_misses(tmp_path):
    cfg, other = skewed(), skewed(seed=4)
    prepared_data(cfg, tmp_path, Builds(cfg))
    builds = Builds(other)
    loaded = prepared_data(other, tmp_path, builds)
    assert builds.calls == 1
    assert cache_file(other, tmp_path) != cache_file(cfg, tmp_path)
    assert_same(loaded, Builds(other)())
    fewer = skewed(num_clients=3)  # the partitions change, the dataset does not
    assert cache_file(fewer, tmp_path) != cache_file(cfg, tmp_path)
    assert len(prepared_data(fewer, tmp_path, Builds(fewer))[1]) == 3


def test_a_model_change_shares_the_cache(tmp_path):
    cfg = skewed()
    prepared_data(cfg, tmp_path, Builds(cfg))
    wider = skewed(model={"name": "mlp", "hidden": [64], "norm": "none"})
    builds = Builds(wider)
    prepared_data(wider, tmp_path, builds)
    assert builds.calls == 0


def test_a_truncated_or_corrupt_file_is_rebuilt(tmp_path):
    cfg = skewed()
    prepared_data(cfg, tmp_path, Builds(cfg))
    path = cache_file(cfg, tmp_path)
    whole = path.read_bytes()
    damaged = bytearray(whole)
    damaged[len(whole) // 3] ^= 0xFF  # one flipped byte inside the arrays
    for broken in (whole[: len(whole) // 2], bytes(damaged), b""):
        path.write_bytes(broken)
        builds = Builds(cfg)
        assert_same(prepared_data(cfg, tmp_path, builds), Builds(cfg)())
        assert builds.calls == 1
        assert path.read_bytes() == whole  # rewritten whole


def test_without_a_directory_nothing_is_written(tmp_path):
    cfg = skewed()
    builds = Builds(cfg)
    prepared_data(cfg, None, builds)
    assert builds.calls == 1 and not any(tmp_path.iterdir())


def test_a_file_whose_partitions_point_past_the_data_is_rebuilt(tmp_path):
    from fedbatch.data.node_cache import save
    from fedbatch.data.partition_table import PartitionTable

    cfg = skewed()
    dataset, parts = Builds(cfg)()
    rows = len(dataset.x_train)
    beyond = PartitionTable(parts.indices + rows, parts.offsets)  # valid layout, wrong rows
    save(cache_file(cfg, tmp_path), dataset, beyond)
    builds = Builds(cfg)
    assert_same(prepared_data(cfg, tmp_path, builds), Builds(cfg)())
    assert builds.calls == 1


def test_text_read_from_a_file_is_never_cached(tmp_path):
    """The file can change under the same config; generated text is cached."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abc\nbca\ncab\n" * 10, encoding="utf-8")
    from_file = tiny_config(data={"name": "text", "path": str(corpus)}, model={"name": "gru"})
    cache = tmp_path / "cache"
    builds = Builds(from_file)
    prepared_data(from_file, cache, builds)
    prepared_data(from_file, cache, builds)
    assert builds.calls == 2 and not cache.exists()
    generated = tiny_config(data={"name": "text", "num_samples": 40}, model={"name": "gru"})
    builds = Builds(generated)
    prepared_data(generated, cache, builds)
    prepared_data(generated, cache, builds)
    assert builds.calls == 1
