"""Split a training set among clients with Flower Datasets' partitioners.

`partition_indices` turns the training labels into a tiny Hugging Face dataset of
(`idx`, `label`) rows, shuffles it (as `FederatedDataset` does), hands it to a
`flwr_datasets` partitioner and reads back, per partition, the `idx` values: row indices
into the training set.

Schemes (`PartitionConfig.name`):

- `iid`: equal sizes (±1) of a random permutation. This is exactly what `IidPartitioner`
  returns (contiguous `Dataset.shard`s of the shuffled rows), computed in numpy: the
  default run then imports neither `datasets` nor `flwr_datasets` (about 1 s of
  start-up), and `IidPartitioner.load_partition` would cost about 1.3 ms of Hugging Face
  overhead per call, i.e. 13 s for 10,000 clients.
- `dirichlet`: `DirichletPartitioner` label skew (alpha, min_partition_size,
  self_balancing=True so that sizes stay close and label skew is what alpha controls).
- `shards`: `ShardPartitioner` (McMahan et al.): rows sorted by label, cut into shards,
  shards dealt at random. Every row is used (`keep_incomplete_shard=True`); the shard
  size is floor or ceil of n / (clients · shards_per_client), whichever gives a shard
  count closest to clients · shards_per_client. Leftover shards go to the lowest
  partition ids (library behaviour), so a client holds shards_per_client shards give
  or take one.
- `quantity`: sizes min_partition_size + Dirichlet(alpha)-share of the rest, summing to
  n, realised by `SizePartitioner` on the shuffled rows (labels stay IID).
- `natural`: one partition per natural id (writer, speaker, user: the dataset's
  `partition.by` column) in sorted id order, `NaturalIdPartitioner`; with `group_size`,
  `GroupedNaturalIdPartitioner` (mode allow-smaller: consecutive sorted ids in groups of
  group_size, the last group smaller). The number of partitions is the data's
  (`natural_count`), which `build_config` sets as num_clients.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from fedbatch.config import PARTITIONS, ConfigError, PartitionConfig
from fedbatch.data.partition_table import PartitionTable

if TYPE_CHECKING:  # imported when a scheme needs them: `datasets` and `flwr_datasets`
    # (whose __init__ pulls its plotting module: seaborn, scipy) cost ~1 s at start-up
    import datasets
    from flwr_datasets.partitioner import Partitioner

# Independent random streams derived from the one seed.
_SHUFFLE, _PARTITIONER, _SIZES = 0, 1, 2


def partition_indices(
    labels: np.ndarray,
    cfg: PartitionConfig,
    num_partitions: int,
    seed: int,
    ids: np.ndarray | None = None,
) -> PartitionTable:
    """Per partition id, the sorted int64 training-row indices it holds (cached), as one
    `PartitionTable`; `ids`: each row's natural id (integer codes), which
    partition=natural splits by."""
    if cfg.name == "natural" and ids is None:
        raise ConfigError("partition.by", cfg.by, "a column of data=hf or an array of data=arrays")
    key = _Labels(ids if cfg.name == "natural" else labels)
    return _partition_cached(key, cfg, num_partitions, seed)


def natural_count(ids: np.ndarray, group_size: int | None) -> int:
    """The partitions a natural partition makes of these ids: one per id, or per group of
    `group_size` ids (the last one smaller)."""
    distinct = len(np.unique(ids))
    return distinct if group_size is None else max(1, -(-distinct // group_size))


class _Labels:
    """Labels made hashable by content, so results can be cached per process."""

    def __init__(self, labels: np.ndarray) -> None:
        array = np.asarray(labels)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"labels must be a 1-D integer array, got {array.dtype}{array.shape}")
        self.array = array.astype(np.int64)  # a private copy
        self.array.flags.writeable = False
        self.digest = hashlib.blake2b(self.array.tobytes(), digest_size=16).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Labels) and self.digest == other.digest


@lru_cache(maxsize=16)
def _partition_cached(
    labels: _Labels, cfg: PartitionConfig, num_partitions: int, seed: int
) -> PartitionTable:
    n = len(labels.array)
    _check_feasible(cfg, n, num_partitions)
    table = (
        _iid_split(n, num_partitions, seed)
        if cfg.name == "iid"
        else PartitionTable.from_parts(_library_split(labels, cfg, num_partitions, seed))
    )
    if table.sizes.min() == 0:
        raise ConfigError(
            "num_clients", num_partitions, f"fewer clients: partition={cfg.name} left one empty"
        )
    return table


def _iid_split(n: int, num_partitions: int, seed: int) -> PartitionTable:
    """Exactly `SizePartitioner(_balanced_sizes)` on the shuffled rows, without importing
    Hugging Face `datasets` and `flwr_datasets` (the default run's start-up): contiguous
    runs of the permutation `Dataset.shuffle(seed)` draws (numpy's `default_rng(seed)`).
    tests/unit/test_partition_lazy.py checks it against the library's."""
    order = np.random.default_rng(_subseed(seed, _SHUFFLE)).permutation(n)
    owner = np.empty(n, dtype=np.int64)  # partition i takes the i-th run of `order`
    owner[order] = np.repeat(np.arange(num_partitions), _balanced_sizes(n, num_partitions))
    return PartitionTable.from_owners(owner, num_partitions)


def _library_split(
    labels: _Labels, cfg: PartitionConfig, num_partitions: int, seed: int
) -> list[np.ndarray]:
    """The partitioner's assignment of the shuffled (`idx`, `label`) rows, as `idx` values."""
    import datasets

    n = len(labels.array)
    # The label column holds the natural ids for partition=natural (`partition_indices`).
    table = datasets.Dataset.from_dict({"idx": np.arange(n), "label": labels.array})
    table = table.shuffle(seed=_subseed(seed, _SHUFFLE))
    partitioner = _make_partitioner(cfg, n, num_partitions, seed)
    partitioner.dataset = table
    return _read_partitions(partitioner, cfg, num_partitions)


def _subseed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _check_feasible(cfg: PartitionConfig, n: int, num_partitions: int) -> None:
    """Reject impossible requests before any sampling."""
    if num_partitions < 1 or num_partitions > n:
        raise ConfigError(
            "num_clients", num_partitions, f"at most {n} (the training set has {n} samples)"
        )
    if cfg.name in ("dirichlet", "quantity") and cfg.min_partition_size * num_partitions > n:
        raise ConfigError(
            "partition.min_partition_size",
            cfg.min_partition_size,
            f"at most {n // num_partitions} for {num_partitions} clients and {n} samples",
        )
    if cfg.name == "shards" and cfg.shards_per_client * num_partitions > n:
        raise ConfigError(
            "partition.shards_per_client",
            cfg.shards_per_client,
            f"at most {n // num_partitions} for {num_partitions} clients and {n} samples",
        )


def _make_partitioner(cfg: PartitionConfig, n: int, num_partitions: int, seed: int) -> Partitioner:
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        GroupedNaturalIdPartitioner,
        NaturalIdPartitioner,
        ShardPartitioner,
        SizePartitioner,
    )

    part_seed = _subseed(seed, _PARTITIONER)
    if cfg.name == "quantity":
        rng = np.random.default_rng(_subseed(seed, _SIZES))
        sizes = _quantity_sizes(n, num_partitions, cfg.alpha, cfg.min_partition_size, rng)
        return SizePartitioner(sizes)
    if cfg.name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(cfg.alpha),
            min_partition_size=cfg.min_partition_size,
            self_balancing=True,
            seed=part_seed,
        )
    if cfg.name == "shards":
        return ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            shard_size=_shard_size(n, num_partitions, cfg.shards_per_client),
            keep_incomplete_shard=True,
            seed=part_seed,
        )
    if cfg.name == "natural" and cfg.group_size is None:
        return NaturalIdPartitioner(partition_by="label")
    if cfg.name == "natural":
        return GroupedNaturalIdPartitioner("label", cfg.group_size, sort_unique_ids=True)
    raise ConfigError("partition", cfg.name, "one of " + ", ".join(PARTITIONS))


def _balanced_sizes(n: int, num_partitions: int) -> np.ndarray:
    """Sizes of `Dataset.shard(contiguous=True)`: the first n % k get one extra row."""
    base, extra = divmod(n, num_partitions)
    sizes = np.full(num_partitions, base, dtype=np.int64)
    sizes[:extra] += 1
    return sizes


def _quantity_sizes(
    n: int, num_partitions: int, alpha: float, minimum: int, rng: np.random.Generator
) -> list[int]:
    """Each partition gets `minimum` rows plus a Dirichlet(alpha) share of the rest."""
    rest = n - minimum * num_partitions
    shares = rng.dirichlet(np.full(num_partitions, alpha)) * rest
    sizes = np.floor(shares).astype(np.int64)
    leftover = rest - int(sizes.sum())
    sizes[np.argsort(sizes - shares, kind="stable")[:leftover]] += 1  # largest remainders
    return [int(s) + minimum for s in sizes]


def _shard_size(n: int, num_partitions: int, shards_per_client: int) -> int:
    """Floor or ceil of n / wanted shards: the one giving a shard count nearest `wanted`.

    Ceil is only a candidate while it still leaves at least one shard per client.
    """
    wanted = num_partitions * shards_per_client
    candidates = [max(1, n // wanted), max(1, -(-n // wanted))]
    feasible = [size for size in candidates if -(-n // size) >= num_partitions]
    return min(feasible, key=lambda size: (abs(-(-n // size) - wanted), size))


def _read_partitions(
    partitioner: Partitioner, cfg: PartitionConfig, num_partitions: int
) -> list[np.ndarray]:
    """Run the library's assignment and map its row positions back to `idx` values."""
    try:  # natural partitioners draw a tqdm bar on stderr while they index the rows
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            # Dirichlet retries and pyarrow sort options warn; the outcome is what counts.
            warnings.simplefilter("ignore")
            _ = partitioner.num_partitions  # runs the (lazy) assignment
            assignment = _assignment(partitioner)
            if assignment is None or len(assignment) != num_partitions:
                # No exposed assignment: the public route, ~1.3 ms per partition.
                return [_idx(partitioner.load_partition(i)) for i in range(num_partitions)]
            idx = _idx(partitioner.dataset)  # partitioner.dataset may be re-sorted (shards)
            return [idx[np.asarray(assignment[i], dtype=np.int64)] for i in range(num_partitions)]
    except ValueError as error:
        key, allowed = _failure(cfg, num_partitions, error)
        raise ConfigError(key, getattr(cfg, key.split(".")[1]), allowed) from None


def _assignment(partitioner: Partitioner) -> dict[int, list[int]] | None:
    """The partitioner's partition id -> row positions map, where it keeps one."""
    if isinstance(getattr(type(partitioner), "partition_id_to_indices", None), property):
        return partitioner.partition_id_to_indices  # type: ignore[attr-defined]
    return getattr(partitioner, "_partition_id_to_indices", None)


def _idx(table: datasets.Dataset) -> np.ndarray:
    return table.with_format("arrow")[:]["idx"].to_numpy().astype(np.int64)


def _failure(cfg: PartitionConfig, num_partitions: int, error: Exception) -> tuple[str, str]:
    """The config key to blame when flwr_datasets cannot realise a partitioning."""
    if cfg.name == "dirichlet":
        return "partition.alpha", (
            f"a larger value, fewer clients or a smaller partition.min_partition_size: "
            f"Dirichlet sampling kept leaving one of {num_partitions} clients with fewer "
            f"than {cfg.min_partition_size} samples (it needs many samples per client)"
        )
    if cfg.name == "shards":
        return "partition.shards_per_client", f"a smaller value ({error})"
    return "partition.min_partition_size", f"a smaller value ({error})"
