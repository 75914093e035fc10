"""The seed's mini-batch workflow, one client's local training (pure torch, no Flower).

shuffle → split into mini-batches → forward → mean loss over the batch → backward →
optimizer step → next batch until the epoch ends → reshuffle for the next epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.config import FULL_BATCH
from fedbatch.local.probes import gradient_norm


@dataclass(frozen=True)
class LocalResult:
    """What one round of local training did and measured."""

    steps: int
    examples_seen: int  # samples processed, counting repeats across epochs
    loss: float  # mean training loss over the processed samples
    accuracy: float
    grad_norm_mean: float  # L2 norm of the mini-batch gradient, over steps
    grad_norm_max: float


def resolve_batch_size(value: int | str, num_examples: int) -> int:
    """`full` means the whole local dataset (full-batch gradient descent)."""
    return num_examples if value == FULL_BATCH else min(int(value), num_examples)


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, min_batch: int = 1
) -> list[torch.Tensor]:
    """One epoch: a fresh permutation of range(n) cut into mini-batches of `batch_size`.

    Every sample appears exactly once. A trailing batch smaller than `min_batch` (BatchNorm
    cannot train on a single sample) is folded into the batch before it.
    """
    batches = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_batch:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def batch_schedule(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    epochs: int,
    steps: int | None = None,
    min_batch: int = 1,
) -> Iterator[torch.Tensor]:
    """Index batches for a round: `epochs` full epochs, or exactly `steps` steps.

    With `steps`, epochs follow each other (each reshuffled) until the count is reached.
    """
    done = 0
    epoch = 0
    while (steps is None and epoch < epochs) or (steps is not None and done < steps):
        for batch in epoch_batches(n, batch_size, generator, min_batch):
            if steps is not None and done >= steps:
                return
            yield batch
            done += 1
        epoch += 1


def _uses_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def train_local(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    epochs: int = 1,
    steps: int | None = None,
    prox_mu: float = 0.0,
    anchor: Sequence[torch.Tensor] | None = None,
) -> LocalResult:
    """Run local mini-batch training on (x, y) in place; return its measurements.

    `prox_mu` > 0 adds FedProx's proximal term mu/2·||w − anchor||² to every batch loss.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    min_batch = 2 if _uses_batchnorm(model) else 1
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    norms: list[torch.Tensor] = []
    seen = 0
    schedule = batch_schedule(
        len(x), batch_size, generator, epochs=epochs, steps=steps, min_batch=min_batch
    )
    for index in schedule:
        index = index.to(x.device, non_blocking=True)
        inputs, targets = x[index], y[index]
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        objective = loss
        if prox_mu > 0.0 and anchor is not None:
            distance = sum((p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))
            objective = loss + 0.5 * prox_mu * distance
        objective.backward()
        norms.append(gradient_norm(params))
        optimizer.step()
        loss_sum += loss.detach() * len(index)
        correct += (logits.detach().argmax(dim=1) == targets).sum()
        seen += len(index)
    if not norms:
        return LocalResult(0, 0, float("nan"), float("nan"), float("nan"), float("nan"))
    stacked = torch.stack(norms)
    return LocalResult(
        steps=len(norms),
        examples_seen=seen,
        loss=float(loss_sum) / seen,
        accuracy=float(correct) / seen,
        grad_norm_mean=float(stacked.mean()),
        grad_norm_max=float(stacked.max()),
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of `model` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        targets = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()
    model.train(was_training)
    return float(loss_sum) / len(x), float(correct) / len(x)
