"""Many clients at once: the plain loop's federated work, vectorised over clients.

The sampled clients' weights are stacked along a new leading axis and every local step
runs for all of them in one call (`torch.func.functional_call` + `vmap` + `grad`), with
the same batches (same shuffle seeds) as the plain loop. Batches of unequal size (the end
of an epoch) are padded and masked, so each client's step is its own exact mean-loss
gradient. Plain SGD only, models without BatchNorm; the FedAvg average is the same.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedbatch.config import RunConfig
from fedbatch.federated.sampling import sample_clients
from fedbatch.federated.workload import Workload
from fedbatch.local.batches import batch_schedule, resolve_batch_size
from fedbatch.local.trainer import evaluate
from fedbatch.seeding import derive_seed


def _client_batches(workload: Workload, client: int, server_round: int) -> list[torch.Tensor]:
    """Indices into the training set of each local step, as the plain loop draws them."""
    cfg = workload.cfg
    rows = torch.as_tensor(workload.partitions[client])
    generator = torch.Generator().manual_seed(
        derive_seed(cfg.seed, "shuffle", client, server_round)
    )
    batch_size = resolve_batch_size(cfg.client.batch_size, len(rows))
    schedule = batch_schedule(
        len(rows), batch_size, generator, epochs=cfg.client.epochs, steps=cfg.client.steps
    )
    return [rows[index] for index in schedule]


def _stacked_step(batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's indices for every client, padded to the longest, and the loss weights
    (1 / batch size on real rows, 0 on padding)."""
    width = max(len(b) for b in batches)
    index = torch.stack([torch.cat([b, b[:1].expand(width - len(b))]) for b in batches])
    mask = torch.stack([(torch.arange(width) < len(b)).float() / len(b) for b in batches])
    return index, mask


def run(cfg: RunConfig, workload: Workload) -> float:
    if cfg.client.optimizer != "sgd" or cfg.model.norm == "batch":
        raise ValueError("the vectorized runner does plain SGD on models without BatchNorm")
    model = workload.initial_model()
    names = [name for name, _ in model.named_parameters()]
    global_state = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        return (
            F.cross_entropy(functional_call(model, params, (x,)), y, reduction="none") * w
        ).sum()

    step_grads = vmap(grad(loss))
    lr = cfg.client.lr
    for server_round in range(1, cfg.rounds + 1):
        clients = sample_clients(cfg.seed, server_round, cfg.num_clients, cfg.clients_per_round)
        plans = [_client_batches(workload, c, server_round) for c in clients]
        if len({len(p) for p in plans}) != 1:
            raise ValueError("the vectorized runner needs the same number of steps per client")
        params = {k: v.expand(len(clients), *v.shape).clone() for k, v in global_state.items()}
        for step in zip(*plans, strict=True):
            index, mask = _stacked_step(list(step))
            grads = step_grads(params, workload.x_train[index], workload.y_train[index], mask)
            params = {k: params[k] - lr * grads[k] for k in names}
        sizes = torch.tensor([len(workload.partitions[c]) for c in clients], dtype=torch.float32)
        weights = sizes / sizes.sum()
        global_state = {
            k: torch.tensordot(weights, v, dims=1) for k, v in params.items()
        }  # FedAvg: the examples-weighted mean over clients
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(global_state[name])
    return evaluate(model, workload.x_test, workload.y_test)[1]
