"""The flat partition table: each client's rows from one index array and offsets."""

from __future__ import annotations

import numpy as np
import pytest

from fedbatch.config import PartitionConfig
from fedbatch.data.partition import partition_indices
from fedbatch.data.partition_table import PartitionTable


def test_rows_grouped_by_owner_in_ascending_order():
    # Rows 0..6 owned by partitions 2, 0, 2, 1, 0, 2, 0 (by hand).
    table = PartitionTable.from_owners(np.array([2, 0, 2, 1, 0, 2, 0]), 3)
    assert [p.tolist() for p in table] == [[1, 4, 6], [3], [0, 2, 5]]
    assert table.sizes.tolist() == [3, 1, 3] and len(table) == 3
    assert table[-1].tolist() == [0, 2, 5] and [p.tolist() for p in table[1:]] == [[3], [0, 2, 5]]
    assert table.pooled().tolist() == list(range(7))
    with pytest.raises(IndexError):
        table[3]


def test_from_parts_sorts_each_part_and_keeps_empty_ones():
    table = PartitionTable.from_parts([np.array([5, 2]), np.array([], dtype=np.int64), [0]])
    assert [p.tolist() for p in table] == [[2, 5], [], [0]]
    assert table.sizes.tolist() == [2, 0, 1] and table.pooled().tolist() == [0, 2, 5]


def test_offsets_must_cover_the_indices():
    with pytest.raises(ValueError, match="offsets"):
        PartitionTable(np.arange(4), np.array([0, 3]))
    with pytest.raises(ValueError, match="offsets"):
        PartitionTable(np.arange(4), np.array([0, 3, 2, 4]))


def test_iid_runs_of_the_seeded_permutation_with_balanced_sizes():
    """partition=iid cuts one seeded permutation into consecutive runs, the first n % k one
    row longer (IidPartitioner's split): computed here with np.array_split."""
    from fedbatch.data.partition import _SHUFFLE, _subseed

    labels = np.zeros(1003, dtype=np.int64)
    table = partition_indices(labels, PartitionConfig(name="iid"), 10, 7)
    order = np.random.default_rng(_subseed(7, _SHUFFLE)).permutation(1003)
    expected = [np.sort(run) for run in np.array_split(order, 10)]
    assert table.sizes.tolist() == [101, 101, 101] + [100] * 7
    assert all(np.array_equal(a, b) for a, b in zip(table, expected, strict=True))


def test_a_million_partitions_are_one_table():
    table = partition_indices(np.zeros(2_000_000, np.int64), PartitionConfig(name="iid"), 10**6, 0)
    assert len(table) == 10**6 and set(np.unique(table.sizes).tolist()) == {2}
    assert np.array_equal(table.pooled(), np.arange(2_000_000))
