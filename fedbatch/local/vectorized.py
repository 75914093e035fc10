"""Many clients' local SGD at once: stacked weights, one batched forward pass per step.

Pure torch, no Flower. The clients' weights are stacked along a new leading axis and each
local step runs for all of them at once, every client on its own batch (the trainer's
shuffles, or its stream's planned batches, whose new rows give prequential loss and
accuracy before the step) at its own learning rate: a CNN that `grouped.py` can run as
one network with client-grouped convolutions (a few clients per pass on the CPU), any other
model by
`torch.func.functional_call` under `vmap`; then one backward pass. A step's batches are
padded to the widest with rows of loss weight 0, so each client's gradient is its own
batch's mean-loss gradient; a client with fewer steps idles through all-padding steps at
learning rate 0, which leave its weights unchanged (and its optimizer state stale, unused
after). The update is torch.optim's SGD (weight decay, momentum, Nesterov), Adam, AdamW,
RMSprop or Adagrad (`stacked_optim.py`). Only for models whose forward pass treats
samples independently (BatchNorm is per client over its real rows: `grouped.py`), no
dropout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from fedbatch.local.grouped import client_chunks, groupable, grouped_logits
from fedbatch.local.stacked_optim import SGDRule, UpdateRule, update
from fedbatch.local.trainer import LocalResult

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientSteps:
    """One client's round: its data, the rows of each step's batch and each step's LR;
    for a stream, how many leading rows of each batch are new (prequential metrics)."""

    x: torch.Tensor
    y: torch.Tensor
    batches: Sequence[torch.Tensor]  # row indices into x, one per step
    lrs: Sequence[float]  # one per step
    weight_decay: float = 0.0
    fresh: Sequence[int] = ()  # per step, when streamed


@dataclass(frozen=True)
class StackedSteps:
    """Every client's steps as [steps, clients, width] row indices into the concatenated
    data and loss weights (1/B on a batch's rows, 0 on padding), and [steps, clients]
    learning rates and batch sizes (both 0 once a client has no steps left); for streams,
    [steps, clients, width] marks of the rows trained on for the first time."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    weights: torch.Tensor
    lrs: torch.Tensor
    sizes: torch.Tensor
    fresh: torch.Tensor | None = None


def stack_steps(clients: Sequence[ClientSteps]) -> StackedSteps:
    steps = max(len(c.batches) for c in clients)
    width = max(len(b) for c in clients for b in c.batches)
    shape = (steps, len(clients))
    index = torch.zeros((*shape, width), dtype=torch.long)
    weights, lrs, sizes = torch.zeros((*shape, width)), torch.zeros(shape), torch.zeros(shape)
    streamed = any(client.fresh for client in clients)
    fresh = torch.zeros((*shape, width), dtype=torch.bool) if streamed else None
    offset = 0
    for c, client in enumerate(clients):
        # Padding (rows and steps) repeats the client's first row, at weight 0.
        index[:, c] = offset
        count = len(client.batches)
        padded = pad_sequence([batch.cpu() for batch in client.batches], batch_first=True)
        lengths = torch.tensor([len(batch) for batch in client.batches])
        real = torch.arange(padded.shape[1]) < lengths[:, None]
        index[:count, c, : padded.shape[1]] = padded + offset
        weights[:count, c, : padded.shape[1]] = real / lengths[:, None]
        lrs[:count, c] = torch.tensor(client.lrs, dtype=lrs.dtype)
        sizes[:count, c] = lengths.to(sizes.dtype)
        if fresh is not None and client.fresh:
            new = torch.tensor(client.fresh)
            fresh[:count, c, : padded.shape[1]] = torch.arange(padded.shape[1]) < new[:, None]
        offset += len(client.x)
    device = clients[0].x.device
    return StackedSteps(
        x=torch.cat([c.x for c in clients]),
        y=torch.cat([c.y for c in clients]),
        index=index.to(device),
        weights=weights.to(device),
        lrs=lrs.to(device),
        sizes=sizes.to(device),
        fresh=None if fresh is None else fresh.to(device),
    )


def stack_params(states: Sequence[Params]) -> Params:
    # In the default layout (strides too, which `contiguous()` leaves alone on size-1
    # axes, e.g. of a 1×1 kernel): under vmap, GroupNorm cannot take the activations of
    # channels_last convolution weights ("NYI: querying is_contiguous inside of vmap").
    default = torch.contiguous_format
    return {key: torch.stack([state[key] for state in states]).clone(memory_format=default)
            for key in states[0]}  # fmt: skip


def train_clients(
    model: nn.Module,
    start: Params,
    clients: Sequence[ClientSteps],
    rule: UpdateRule | None = None,
    *,
    grad_norms: bool = True,
) -> tuple[Params, list[LocalResult]]:
    """Train the clients from their stacked weights `start` ({name: [clients, ...]} of
    `model`'s parameters, and of its BatchNorm buffers if any); return the trained stacked
    weights (and buffers) and each client's result, measured as the trainer measures it."""
    rule = rule or SGDRule()
    plan = stack_steps(clients)
    buffer_names = {name for name, _ in model.named_buffers()}
    buffers = {key: value.clone() for key, value in start.items() if key in buffer_names}

    step_gradients = _step_gradients(model, plan.x.device)
    zeros = torch.zeros(len(clients), device=plan.x.device)
    loss_sum, norm_sum, norm_max = zeros.clone(), zeros.clone(), zeros.clone()
    correct = torch.zeros(len(clients), dtype=torch.long, device=plan.x.device)
    prequential = Prequential(zeros.clone(), correct.clone()) if plan.fresh is not None else None
    decay = torch.tensor([c.weight_decay for c in clients], device=plan.x.device)
    decayed = any(c.weight_decay for c in clients)
    params = {key: value.detach().clone() for key, value in start.items()
              if key not in buffer_names}  # fmt: skip
    state: dict[str, Params] = {}
    model.train()
    for s in range(len(plan.index)):
        rows = plan.index[s]
        loss, row_losses, row_hits, grads = step_gradients(
            params, buffers, plan.x[rows], plan.y[rows], plan.weights[s]
        )
        if s == 0:  # updates that read the gradients across their memory order are slow
            params = {key: _laid_out_as(grads[key], value) for key, value in params.items()}
        loss_sum += loss * plan.sizes[s]
        correct += (row_hits & (plan.weights[s] > 0)).sum(dim=-1)
        if prequential is not None:  # test-then-train: new rows, before this step's update
            prequential.add(row_losses, row_hits, plan.fresh[s])
        if grad_norms:  # the whole gradient's L2 norm: 0 on a finished client's steps
            per_tensor = torch.stack([_client_norms(g) for g in grads.values()])
            norm = per_tensor.pow(2).sum(dim=0).sqrt()
            norm_sum += norm
            norm_max = torch.maximum(norm_max, norm)
        update(params, grads, state, s + 1, plan.lrs[s], decay if decayed else None, rule)
    trained = {key: value.detach() for key, value in params.items()} | buffers
    results = _results(clients, loss_sum, correct, norm_sum, norm_max, grad_norms)
    if prequential is not None:
        results = prequential.results(clients, results)
    return trained, results


@dataclass(frozen=True)
class Prequential:
    """Per client: the summed loss and the hits on rows trained on for the first time,
    measured before the step that trains on them (as the trainer's tally does)."""

    loss: torch.Tensor
    correct: torch.Tensor

    @torch.no_grad()
    def add(self, row_losses: torch.Tensor, row_hits: torch.Tensor, fresh: torch.Tensor) -> None:
        self.loss.add_((row_losses * fresh).sum(dim=-1))
        self.correct.add_((row_hits & fresh).sum(dim=-1))

    def results(self, clients: Sequence[ClientSteps], results: list[LocalResult]
                ) -> list[LocalResult]:  # fmt: skip
        losses, hits = self.loss.tolist(), self.correct.tolist()
        measured = []
        for c, (client, result) in enumerate(zip(clients, results, strict=True)):
            new = sum(client.fresh)
            nan = float("nan")
            measured.append(
                replace(
                    result,
                    prequential_samples=new,
                    prequential_loss=losses[c] / new if new else nan,
                    prequential_accuracy=hits[c] / new if new else nan,
                )
            )
        return measured


# (stacked weights, buffers, inputs, labels, loss weights) → each client's weighted loss,
# each row's loss and hit (detached), and the gradients.
StepGradients = Callable[
    [Params, Params, torch.Tensor, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor, torch.Tensor, Params],
]


def _step_gradients(model: nn.Module, device: torch.device) -> StepGradients:
    """(stacked weights, BatchNorm buffers, inputs [clients, width, ...], labels, loss
    weights) → each client's weighted loss, each row's loss and hit, and the loss
    gradient: as one
    grouped network, a few clients at a time, for a CNN or BatchNorm model `grouped.py`
    can run; by vmap for the rest (no buffers)."""
    if groupable(model):
        return partial(_grouped_gradients, model, device)

    def client_loss(params: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        logits = functional_call(model, params, (x,))
        rows = _row_losses(logits, y)
        return (rows * w).sum(dim=-1), rows.detach(), _row_hits(logits, y)

    losses = vmap(client_loss)

    def vmapped(params: Params, buffers: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Params]:  # fmt: skip
        leaves = {key: value.detach().requires_grad_() for key, value in params.items()}
        loss, rows, hits = losses(leaves, x, y, w)
        # Clients share no weights, so the gradient of the summed losses holds each
        # client's own; one backward through the vmapped forward beats vmap(grad(...)).
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach(), rows, hits, dict(zip(leaves, grads, strict=True))

    return vmapped


def _grouped_gradients(
    model: nn.Module, device: torch.device, params: Params, buffers: Params, x: torch.Tensor,
    y: torch.Tensor, w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Params]:  # fmt: skip
    losses, rows, hits, grads = [], [], [], []
    for chunk in client_chunks(len(x), x.shape[1], device):
        leaves = {key: value[chunk].detach().requires_grad_() for key, value in params.items()}
        statistics = {key: value[chunk] for key, value in buffers.items()}  # views
        logits = grouped_logits(model, leaves, x[chunk], statistics, w[chunk] > 0)
        row_losses = _row_losses(logits, y[chunk])
        loss = (row_losses * w[chunk]).sum(dim=-1)
        grads.append(torch.autograd.grad(loss.sum(), list(leaves.values())))
        losses.append(loss.detach())
        rows.append(row_losses.detach())
        hits.append(_row_hits(logits, y[chunk]))
    stacked = [torch.cat(parts) for parts in zip(*grads, strict=True)]
    loss, row_losses, row_hits = (torch.cat(parts) for parts in (losses, rows, hits))
    return loss, row_losses, row_hits, dict(zip(params, stacked, strict=True))


def _row_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row of logits [..., rows, classes], shaped like y."""
    return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)


@torch.no_grad()
def _row_hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1) == y


def _client_norms(stacked: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(stacked, dim=tuple(range(1, stacked.dim())))


@torch.no_grad()
def _laid_out_as(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`param` with the memory layout of its gradient (a transposed one, for a weight
    whose forward multiplies by its transpose)."""
    if grad.stride() == param.stride():
        return param
    return torch.empty_like(grad).copy_(param)


def _results(
    clients: Sequence[ClientSteps],
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    norm_sum: torch.Tensor,
    norm_max: torch.Tensor,
    grad_norms: bool,
) -> list[LocalResult]:
    losses, hits = loss_sum.tolist(), correct.tolist()
    norm_sums, norm_maxima = norm_sum.tolist(), norm_max.tolist()
    nan = float("nan")
    results = []
    for c, client in enumerate(clients):
        steps, samples = len(client.batches), sum(len(b) for b in client.batches)
        results.append(
            LocalResult(
                steps=steps,
                examples_seen=samples,
                loss=losses[c] / samples,
                accuracy=hits[c] / samples,
                grad_norm_mean=norm_sums[c] / steps if grad_norms else nan,
                grad_norm_max=norm_maxima[c] if grad_norms else nan,
                lr_mean=sum(client.lrs) / steps,
            )
        )
    return results
