"""A case's work in Apple's pfl-research (`pfl` 0.6, PyTorch backend): FedAvg in simulation.

What a pfl user writes: a `FederatedDataset` whose users are our partitions, a
`PyTorchModel` (local optimizer `client.optimizer`, built fresh per user as ours; central
SGD with lr 1.0, i.e. plain averaging of the model deltas), `WeightByDatapoints` (so the
average is weighted by examples, as ours),
`FederatedAveraging` run on a `SimulatedBackend`, no DP, no evaluation during training.

Deviations from the `plain` runner:
- Sampling is pfl's: a `minimize_reuse` user sampler cycling through the users in an order
  shuffled once by the run seed, so a cohort has distinct users and, when the cohort is
  the whole population (SMALL), every round trains every client, as `sample_clients` does.
  Otherwise the cohorts are not those of `sample_clients`.
- pfl's `Dataset.iter` never shuffles and its `local_num_steps` stops at the end of an
  epoch, so the user dataset yields our `batch_schedule` (same shuffle seeds, epochs or
  exact step count); pfl then runs one "epoch" over it.
- pfl averages trainable parameters only; buffers (BatchNorm statistics) are neither
  averaged nor reset between users, unlike `plain`, which averages the whole state_dict.
- Importing pfl's PyTorch ops sets torch's multiprocessing start method to `forkserver`;
  `run` sets PFL_PYTORCH_DEVICE (if unset) to the workload's device for pfl's tensors.

pfl is imported inside `run`, so fedbatch works without it. Install: `pip install
"pfl[pytorch]==0.6.0"` (it pins attrs<24 through dp-accounting).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.bench import rounds
from fedbatch.config import RunConfig
from fedbatch.federated.workload import Workload
from fedbatch.local.optim import build_optimizer
from fedbatch.local.trainer import batch_schedule, evaluate
from fedbatch.seeding import derive_seed


class _PflModule(nn.Module):
    """Our model with the `loss` and `metrics` methods `PyTorchModel` requires."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        from pfl.metrics import Weighted

        loss = F.cross_entropy(self.net(x), y, reduction="sum")
        return {"loss": Weighted(float(loss), len(x))}


def run(cfg: RunConfig, workload: Workload) -> float:
    os.environ.setdefault("PFL_PYTORCH_DEVICE", str(workload.device))
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.aggregate.weighting import WeightByDatapoints
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNTrainHyperParams
    from pfl.model.pytorch import PyTorchModel

    current_round = [0]  # the server round being trained, for the shuffle seeds
    round_ends: list[float] = []

    class RoundTimes(TrainingProcessCallback):
        def after_central_iteration(self, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
            round_ends.append(rounds.now())
            return super().after_central_iteration(*args, **kwargs)

    class FedAvgNoEval(FederatedAveraging):
        """FedAvg that never evaluates users (pfl evaluates them at iteration 0)."""

        def get_next_central_contexts(self, model: Any, iteration: int, *args: Any) -> Any:
            contexts, model, metrics = super().get_next_central_contexts(model, iteration, *args)
            current_round[0] = iteration + 1
            if contexts is not None:
                contexts = tuple(replace(c, do_evaluation=False) for c in contexts)
            return contexts, model, metrics

    class ClientDataset(Dataset):
        """A partition whose `iter` yields the batches of our `batch_schedule`."""

        def __init__(self, client: int) -> None:
            super().__init__(workload.client_data(client), user_id=str(client))
            self.client = client

        def iter(self, batch_size: int | None) -> Any:
            x, y = self.raw_data
            generator = torch.Generator().manual_seed(
                derive_seed(cfg.seed, "shuffle", self.client, current_round[0])
            )
            schedule = batch_schedule(
                len(x),
                batch_size or len(x),
                generator,
                epochs=cfg.client.epochs,
                steps=cfg.client.steps,
            )
            for index in schedule:
                yield x[index], y[index]

    order = np.random.default_rng(derive_seed(cfg.seed, "pfl-users")).permutation(cfg.num_clients)
    users = [int(i) for i in order]
    federated = FederatedDataset(ClientDataset, get_user_sampler("minimize_reuse", users))
    backend = SimulatedBackend(
        training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()]
    )

    net = workload.initial_model()
    module = _PflModule(net)
    model = PyTorchModel(
        model=module,
        # A fresh local optimizer per user, as ours: client.optimizer (momentum included).
        local_optimizer_create=lambda params, lr: build_optimizer(params, cfg.client, lr=lr),
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    batch_size = None if cfg.client.batch_size == "full" else int(cfg.client.batch_size)
    FedAvgNoEval().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=cfg.rounds,
            evaluation_frequency=cfg.rounds + 1,
            train_cohort_size=cfg.clients_per_round,
            val_cohort_size=None,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_batch_size=batch_size,
            local_num_epochs=1,  # one pass over ClientDataset.iter: our whole schedule
            local_learning_rate=cfg.client.lr,
        ),
        callbacks=[RoundTimes()],
        send_metrics_to_platform=False,
    )
    rounds.record_round_ends(round_ends)
    return evaluate(net, workload.x_test, workload.y_test)[1]
