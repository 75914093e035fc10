"""Every client's training-row indices in two flat arrays, whatever the number of clients.

A list of one numpy array per client costs about 100 bytes of object overhead per client
and a Python loop to build, sort or size it: at a million clients, seconds and hundreds
of MB. `PartitionTable` keeps one int64 array of row indices, partition after partition
(each partition's rows sorted), and the offsets where each partition starts. Indexing it
gives a read-only view of one partition, so code written for a list of arrays reads it
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np


class PartitionTable(Sequence[np.ndarray]):
    """Partition i holds `indices[offsets[i]:offsets[i + 1]]`, sorted ascending."""

    def __init__(self, indices: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
            raise ValueError("offsets must be a 1-D array starting at 0")
        if offsets[-1] != len(indices) or np.any(np.diff(offsets) < 0):
            raise ValueError("offsets must rise to len(indices)")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.indices.flags.writeable = False
        self.offsets.flags.writeable = False

    @classmethod
    def from_owners(cls, owner: np.ndarray, num_partitions: int) -> PartitionTable:
        """The table where row r belongs to partition `owner[r]` (every row to one)."""
        indices = np.argsort(owner, kind="stable")  # grouped by partition, rows ascending
        counts = np.bincount(owner, minlength=num_partitions)
        return cls(indices, np.concatenate(([0], np.cumsum(counts))))

    @classmethod
    def from_parts(cls, parts: Sequence[np.ndarray]) -> PartitionTable:
        """The table of these per-partition row indices (each sorted here)."""
        sizes = [len(part) for part in parts]
        indices = np.concatenate([np.sort(part) for part in parts]) if parts else np.empty(0)
        return cls(indices.astype(np.int64), np.concatenate(([0], np.cumsum(sizes))))

    @property
    def sizes(self) -> np.ndarray:
        """Each partition's number of rows (int64)."""
        return np.diff(self.offsets)

    def pooled(self) -> np.ndarray:
        """Every partition's rows together, sorted: the pooled training data's rows."""
        return np.sort(self.indices)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]  # negative indices, and IndexError past the end
        return self.indices[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))
