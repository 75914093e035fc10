"""The seed's mini-batch workflow, one client's local training (pure torch, no Flower).

shuffle → split into mini-batches → forward → mean loss over the batch → backward →
optimizer step → next batch until the epoch ends → reshuffle for the next epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from fedbatch.local.minibatches import PlannedBatch, batch_schedule
from fedbatch.local.optim import loop_optimizer
from fedbatch.local.sequences import real_targets, sequence_lengths, trim_to, trim_to_longest
from fedbatch.local.tally import StepTally


@dataclass(frozen=True)
class LocalResult:
    """What one round of local training did and measured."""

    steps: int
    examples_seen: int  # samples processed, counting repeats across epochs
    loss: float  # mean training loss over the processed samples
    accuracy: float
    grad_norm_mean: float  # L2 norm of the mini-batch gradient, over steps
    grad_norm_max: float
    layer_grad_norms: dict[str, float] = field(default_factory=dict)  # mean per tensor
    lr_mean: float = float("nan")  # mean LR over steps, when a schedule set it
    times: StepTimes | None = None
    prequential_samples: int = 0  # new samples evaluated before training on them
    prequential_loss: float = float("nan")
    prequential_accuracy: float = float("nan")
    tokens: int = 0  # text: real tokens trained on (targets that are not padding)
    token_slots: int = 0  # text: positions computed, padding included (batch × its width)


def uses_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def _train_mode(model: nn.Module) -> list[nn.Module]:
    """`model.train()`, skipped when every module is in training mode already and none
    has its own `train` (it costs more than a step's arithmetic for a small model);
    returns the model's modules."""
    modules = list(model.modules())
    if not all(m.training and type(m).train is nn.Module.train for m in modules):
        model.train()
    return modules


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds spent gathering mini-batches versus computing on them."""

    data: float = 0.0
    compute: float = 0.0


class _Clock:
    """Per-step data/compute timing; synchronizes CUDA so that the split is honest."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.data = self.compute = 0.0
        self.mark = time.perf_counter()

    def lap(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed, self.mark = now - self.mark, now
        return elapsed


Transform = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TokenCount:
    """Text: real tokens and computed positions (padding included) of the batches so far."""

    tokens: int = 0
    slots: int = 0


def _schedule(
    opts: TrainOptions,
    n: int,
    generator: torch.Generator,
    min_batch: int,
    lengths: torch.Tensor | None,
) -> Iterable[PlannedBatch] | Iterator[torch.Tensor]:
    """The round's batches: a stream's plan, or the epochs' (or steps') shuffled indices."""
    if opts.batches is not None:
        return opts.batches
    return batch_schedule(
        n,
        opts.batch_size * opts.accumulate,
        generator,
        epochs=opts.epochs,
        steps=opts.steps,
        min_batch=min_batch,
        lengths=lengths if opts.bucket_by_length else None,
    )


def _gathered(
    x: torch.Tensor,
    y: torch.Tensor,
    schedule: Iterable[PlannedBatch] | Iterator[torch.Tensor],
    opts: TrainOptions,
    lengths: torch.Tensor | None = None,
    count: TokenCount | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """(inputs, targets, fresh rows) per step; with `opts.prefetch`, the next batch is
    gathered meanwhile. Rows marked by a drifted concept go through `opts.transform`. With
    `lengths` (text), each batch is trimmed to its longest sequence and counted into `count`."""
    transform = opts.transform

    def gather(batch: PlannedBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        planned = isinstance(batch, PlannedBatch)
        index = batch.index if planned else batch
        width = None
        if lengths is not None:
            rows = lengths[index.cpu()]
            width = int(rows.max())
            if count is not None:
                count.tokens += int(rows.sum())
                count.slots += width * len(rows)
        if index.device != x.device:
            index = index.to(x.device, non_blocking=True)
        inputs, targets = x[index], y[index]
        if width is not None:
            inputs, targets = trim_to(inputs, targets, width)
        if not planned:
            return inputs, targets, 0
        if transform is not None and batch.concept is not None:
            inputs, targets = transform(inputs, targets, batch.concept.to(x.device))
        return inputs, targets, batch.fresh

    if not opts.prefetch:
        if lengths is None and x.device.type == "cpu" and opts.batches is None:
            # Epoch indices are CPU tensors: nothing to move, trim or transform.
            return ((x[index], y[index], 0) for index in schedule)
        return map(gather, schedule)
    return _prefetched(gather, schedule)


def _prefetched(
    gather: Callable[[Any], tuple[torch.Tensor, torch.Tensor, int]], schedule: Iterable[Any]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """`gather` of each batch, the next one gathered in another thread meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in schedule:
            ready, pending = pending, pool.submit(gather, batch)
            if ready is not None:
                yield ready.result()
        if pending is not None:
            yield pending.result()


@dataclass(frozen=True)
class TrainOptions:
    """How one round of local training runs, beyond the data and the optimizer."""

    batch_size: int
    epochs: int = 1
    steps: int | None = None
    accumulate: int = 1  # micro-batches of `batch_size` per optimizer step
    micro_batch: int | None = None  # split passes further to fit memory (same update)
    precision: str = "fp32"
    lr_at: Callable[[int], float] | None = None  # the LR of each step (None: as set)
    prox_mu: float = 0.0
    anchor: Sequence[torch.Tensor] | None = None
    grad_norms: bool = True
    layer_norms: bool = False
    timing: bool = False
    prefetch: bool = False
    batches: Sequence[PlannedBatch] | None = None  # a stream's plan instead of epochs/steps
    transform: Transform | None = None  # drift applied to rows with concept 1
    bucket_by_length: bool = False  # text: batches of sequences of similar length


def train_local(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    generator: torch.Generator,
    options: TrainOptions | None = None,
    **option_values: Any,
) -> LocalResult:
    """Run local mini-batch training on (x, y) in place; return its measurements.

    Options come as a TrainOptions or as its fields by keyword. `prox_mu` > 0 adds FedProx's
    proximal term mu/2·||w − anchor||². With `accumulate` = k each step averages the
    gradients of k micro-batches of B, weighted by their sizes: the update of one k·B batch.
    """
    opts = options or TrainOptions(**option_values)
    modules = _train_mode(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    min_batch = 2 if any(isinstance(m, _BatchNorm) for m in modules) else 1
    autocast = autocast_context(x.device, opts.precision)
    scaler = torch.amp.GradScaler("cuda") if opts.precision == "fp16" else None
    tally = StepTally(x.device, opts.grad_norms, opts.layer_norms)
    lrs: list[float] = []
    clock = _Clock(x.device) if opts.timing else None
    lengths = sequence_lengths(y)  # text: batches are trimmed, tokens counted
    count = TokenCount()
    schedule = _schedule(opts, len(x), generator, min_batch, lengths)
    gathered = _gathered(x, y, schedule, opts, lengths, count)
    # Decided once, so that the common step (one pass, no proximal term) does little more
    # than a bare loop's.
    splits = _pass_size(opts) != opts.batch_size or opts.accumulate != 1
    proximal_anchor = opts.anchor if opts.prox_mu > 0.0 else None
    loop = loop_optimizer(optimizer)
    for inputs, targets, fresh in gathered:
        if clock is not None:
            clock.data += clock.lap()
        if opts.lr_at is not None:
            lrs.append(_set_lr(optimizer, opts.lr_at(tally.steps)))
        loop.zero_grad()
        offset = 0
        micro = _micro_batches(inputs, targets, opts, min_batch) if splits else ((inputs, targets),)
        split = len(micro) > 1
        total = real_targets(targets) if split else 1
        for micro_x, micro_y in micro:
            with autocast:
                logits = model(micro_x)
                loss = F.cross_entropy(logits, micro_y)
            share = real_targets(micro_y) / total if split else 1.0  # of the step's mean loss
            objective = loss * share if split else loss
            if proximal_anchor is not None:
                distance = sum(
                    (p - a).pow(2).sum() for p, a in zip(params, proximal_anchor, strict=True)
                )
                proximal = 0.5 * opts.prox_mu * distance
                objective = objective + (
                    proximal * share if split else proximal * len(micro_y) / len(targets)
                )
            (scaler.scale(objective) if scaler else objective).backward()
            tally.add_batch(loss, logits, micro_y)
            if fresh > offset:  # test-then-train: the new rows, before this step's update
                tally.add_prequential(logits[: fresh - offset], micro_y[: fresh - offset])
                offset += micro_y.shape[0]  # no later micro-batch has new rows otherwise
        if scaler is not None:
            scaler.unscale_(optimizer)
        tally.add_step(params)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            loop.step()
        if clock is not None:
            clock.compute += clock.lap()
    measured = tally.summary()
    if not tally.samples:
        nan = float("nan")
        return LocalResult(0, 0, nan, nan, nan, nan)
    return LocalResult(
        steps=tally.steps,
        examples_seen=tally.samples,
        loss=measured.loss,
        accuracy=measured.accuracy,
        grad_norm_mean=measured.grad_norm_mean,
        grad_norm_max=measured.grad_norm_max,
        layer_grad_norms=dict(zip(names, measured.layer_grad_norms, strict=False)),
        lr_mean=sum(lrs) / len(lrs) if lrs else float("nan"),
        times=StepTimes(clock.data, clock.compute) if clock else None,
        prequential_samples=tally.prequential_samples,
        prequential_loss=measured.prequential_loss,
        prequential_accuracy=measured.prequential_accuracy,
        tokens=count.tokens,
        token_slots=count.slots,
    )


def _micro_batches(
    inputs: torch.Tensor, targets: torch.Tensor, opts: TrainOptions, min_batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The step's micro-batches of B (one without accumulation); a trailing one smaller
    than `min_batch` is folded into the one before, as epoch_batches does."""
    size = _pass_size(opts)
    if opts.accumulate == 1 and size == opts.batch_size:
        return [(inputs, targets)]
    pairs = list(zip(inputs.split(size), targets.split(size), strict=True))
    if len(pairs) > 1 and len(pairs[-1][1]) < min_batch:
        (x1, y1), (x2, y2) = pairs[-2:]
        pairs[-2:] = [(torch.cat([x1, x2]), torch.cat([y1, y2]))]
    return pairs


def _pass_size(opts: TrainOptions) -> int:
    """Samples per forward/backward pass."""
    return min(opts.batch_size, opts.micro_batch or opts.batch_size)


def autocast_context(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of `model` on (x, y), in eval mode; for text,
    per real token (padding is neither a target nor computed beyond a batch's longest)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        inputs, targets = x[start : start + batch_size], y[start : start + batch_size]
        if targets.ndim == 2:
            inputs, targets = trim_to_longest(inputs, targets)
        logits = model(inputs)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        correct += (logits.argmax(dim=1) == targets).sum()  # padding (-100) never matches
    model.train(was_training)
    units = len(x) if y.ndim == 1 else int(real_targets(y))
    return float(loss_sum) / units, float(correct) / units
