"""What a process needs to train or evaluate for a run: data, partitions, model, device.

Built once per process and per run configuration (`workload_for`), so repeated messages
to the same process reuse tensors and the model object instead of rebuilding them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedbatch.config import RunConfig, config_from_json
from fedbatch.data.datasets import Dataset, load_dataset
from fedbatch.data.drift import DriftTransform
from fedbatch.data.node_cache import Prepared, prepared_data
from fedbatch.data.partition import partition_indices
from fedbatch.data.partition_table import PartitionTable
from fedbatch.data.stream import ClientStream
from fedbatch.data.text import partition_labels
from fedbatch.local.models import build_model, memory_format
from fedbatch.seeding import derive_seed


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Workload:
    cfg: RunConfig
    dataset: Dataset
    device: torch.device
    partitions: PartitionTable
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    # Wall seconds this process spent building the data and the partitions (the benchmark's).
    data_seconds: float = 0.0
    partition_seconds: float = 0.0
    _indices: dict[int, torch.Tensor] = field(default_factory=dict)
    _model: nn.Module | None = None
    _streams: dict[int, ClientStream] = field(default_factory=dict)
    _drift: DriftTransform | None = None

    def stream(self, partition_id: int) -> ClientStream:
        """The partition's arrival stream over virtual time (cached: it is stateless)."""
        stream = self._streams.get(partition_id)
        if stream is None:
            labels = self.dataset.y_train[self.partitions[partition_id]]
            stream = ClientStream(
                self.cfg.stream, self.cfg.seed, partition_id, labels, self.dataset.num_classes
            )
            self._streams[partition_id] = stream
        return stream

    def drift(self) -> DriftTransform:
        if self._drift is None:
            features = int(np.prod(self.dataset.input_shape))
            self._drift = DriftTransform(
                self.cfg.stream, self.cfg.seed, features, self.dataset.num_classes
            )
        return self._drift

    def client_data(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The partition's samples as tensors on the device.

        Only the index is cached: gathering a partition costs little next to training on
        it, and caching copies would duplicate the whole training set in every process.
        """
        index = self._indices.get(partition_id)
        if index is None:
            index = torch.tensor(self.partitions[partition_id], device=self.device)
            self._indices[partition_id] = index
        return self.x_train[index], self.y_train[index]

    def initial_model(self) -> nn.Module:
        """A freshly initialised model; the init is seeded by the run seed alone."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, "model-init"))
            model = build_model(self.cfg.model, self.dataset.input_shape, self.dataset.num_classes)
        return model.to(self.device, memory_format=memory_format(self.cfg.model, self.device))

    def model(self) -> nn.Module:
        """This process's reusable model object; callers load the weights they need."""
        if self._model is None:
            self._model = self.initial_model()
        return self._model


def _build_data(cfg: RunConfig, seconds: dict[str, float]) -> Prepared:
    """The run's dataset and partitions; the wall seconds of each into `seconds`."""
    started = time.perf_counter()
    dataset = load_dataset(cfg.data, cfg.seed)
    loaded = time.perf_counter()
    labels = partition_labels(dataset.y_train)
    partitions = partition_indices(
        labels, cfg.partition, cfg.num_clients, cfg.seed, dataset.train_ids
    )
    seconds |= {"data": loaded - started, "partition": time.perf_counter() - loaded}
    return dataset, partitions


def build_workload(cfg: RunConfig, data_cache: Path | None = None) -> Workload:
    """The run's workload; its data and partitions from (or into) `data_cache`, when
    given (`fedbatch.data.node_cache`)."""
    # Torch's default (one thread per core) oversubscribes the cores as soon as anything
    # else runs, e.g. other sweep jobs or Ray actors, and small models gain little from it.
    torch.set_num_threads(cfg.engine.threads)
    seconds = {"data": 0.0, "partition": 0.0}  # stay 0 when read from the cache
    dataset, partitions = prepared_data(cfg, data_cache, lambda: _build_data(cfg, seconds))
    # Torch imports its compiler stack, torch._dynamo (1.4-2.5 s here), when the first
    # optimizer is built (torch.optim's methods are wrapped by torch._disable_dynamo, which
    # imports it on first call), so every run pays it, a plain PyTorch loop too. Pay it
    # here, with the data, rather than inside the first round's measured time (and after
    # the data: importing it first would raise the peak RSS by its 70 MB).
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    device = resolve_device(cfg.device)

    def tensor(array: np.ndarray) -> torch.Tensor:
        with warnings.catch_warnings():
            # The cached arrays are read-only: on the CPU a zero-copy view (tensors are
            # never written), on a GPU a copy; torch warns about either.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            if device.type != "cpu":
                return torch.as_tensor(array, device=device)
            return torch.from_numpy(array)

    return Workload(
        cfg=cfg,
        dataset=dataset,
        device=device,
        partitions=partitions,
        x_train=tensor(dataset.x_train),
        y_train=tensor(dataset.y_train),
        x_test=tensor(dataset.x_test),
        y_test=tensor(dataset.y_test),
        data_seconds=seconds["data"],
        partition_seconds=seconds["partition"],
    )


@lru_cache(maxsize=2)
def workload_for(
    config_json: str, device: str | None = None, data_cache: str | None = None
) -> Workload:
    """The process-wide workload of the run whose configuration is `config_json`, on
    `device` when given (a SuperNode's own device) instead of the config's, its data kept
    in the directory `data_cache` when given (a SuperNode's own)."""
    cfg = config_from_json(config_json)
    if device is not None:
        cfg = replace(cfg, device=device)
    return build_workload(cfg, None if data_cache is None else Path(data_cache))
