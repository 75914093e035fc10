"""The local work of a benchmark client as a bare PyTorch loop: no monitoring, no records."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.federated.workload import Workload
from fedbatch.local.minibatches import batch_schedule, resolve_batch_size
from fedbatch.local.optim import build_optimizer
from fedbatch.seeding import derive_seed


def bare_local_sgd(model: nn.Module, workload: Workload, client: int, server_round: int) -> int:
    """Train `model` in place on `client`'s data for one round, with the same batches
    (same shuffle seeds) as fedbatch's trainer; return the client's example count."""
    cfg = workload.cfg
    optimizer = build_optimizer(model.parameters(), cfg.client)
    x, y = workload.client_data(client)
    generator = torch.Generator().manual_seed(
        derive_seed(cfg.seed, "shuffle", client, server_round)
    )
    batch_size = resolve_batch_size(cfg.client.batch_size, len(x))
    for index in batch_schedule(
        len(x), batch_size, generator, epochs=cfg.client.epochs, steps=cfg.client.steps
    ):
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    return len(x)
