"""What a process needs to train or evaluate for a run: data, partitions, model, device.

Built once per process and per run configuration (`workload_for`), so repeated messages
to the same process reuse tensors and the model object instead of rebuilding them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from fedbatch.config import RunConfig, config_from_json
from fedbatch.data.datasets import Dataset, load_dataset
from fedbatch.data.partition import partition_indices
from fedbatch.local.models import build_model
from fedbatch.seeding import derive_seed


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is a configuration error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Workload:
    cfg: RunConfig
    dataset: Dataset
    device: torch.device
    partitions: list
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    _client_data: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _model: nn.Module | None = None

    def client_data(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The partition's samples as tensors on the device (cached per process)."""
        if partition_id not in self._client_data:
            index = torch.tensor(self.partitions[partition_id], device=self.device)
            self._client_data[partition_id] = (self.x_train[index], self.y_train[index])
        return self._client_data[partition_id]

    def initial_model(self) -> nn.Module:
        """A freshly initialised model; the init is seeded by the run seed alone."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.cfg.seed, "model-init"))
            model = build_model(self.cfg.model, self.dataset.input_shape, self.dataset.num_classes)
        return model.to(self.device)

    def model(self) -> nn.Module:
        """This process's reusable model object; callers load the weights they need."""
        if self._model is None:
            self._model = self.initial_model()
        return self._model


def build_workload(cfg: RunConfig) -> Workload:
    dataset = load_dataset(cfg.data, cfg.seed)
    partitions = partition_indices(dataset.y_train, cfg.partition, cfg.num_clients, cfg.seed)
    device = resolve_device(cfg.device)

    def tensor(array, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(array, dtype=dtype, device=device)

    return Workload(
        cfg=cfg,
        dataset=dataset,
        device=device,
        partitions=partitions,
        x_train=tensor(dataset.x_train, torch.float32),
        y_train=tensor(dataset.y_train, torch.long),
        x_test=tensor(dataset.x_test, torch.float32),
        y_test=tensor(dataset.y_test, torch.long),
    )


@lru_cache(maxsize=2)
def workload_for(config_json: str) -> Workload:
    """The process-wide workload of the run whose configuration is `config_json`."""
    return build_workload(config_from_json(config_json))
