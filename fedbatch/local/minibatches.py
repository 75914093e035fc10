"""Shuffled index batches for local epochs or a fixed number of steps (pure torch);
for sequences, optionally bucketed by length."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedbatch.config import FULL_BATCH

BUCKET_POOL = 100  # batches sorted together when bucketing (torchtext's default)


@dataclass(frozen=True)
class PlannedBatch:
    """One step's rows of the client's data, when a stream plans the batches."""

    index: torch.Tensor
    fresh: int = 0  # leading rows trained on for the first time: prequential metrics
    concept: torch.Tensor | None = None  # per row, 1 where a drift transform applies


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


def bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, min_batch: int = 1
) -> list[torch.Tensor]:
    """One epoch of batches of similar lengths (torchtext's BucketIterator): a fresh
    permutation cut into pools of `BUCKET_POOL` batches, each pool sorted by length (stably:
    equal lengths keep their random order) and cut into batches of `batch_size`, then the
    epoch's batches in random order.

    Every sample appears exactly once, in as many batches of the same sizes as
    `epoch_batches` (pools hold whole batches, so only the last batch may be short).
    """
    order = torch.randperm(len(lengths), generator=generator)
    batches: list[torch.Tensor] = []
    for pool in order.split(batch_size * BUCKET_POOL):
        ranked = pool[torch.argsort(lengths[pool], stable=True)]
        batches += list(ranked.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < min_batch:
        batches[-2:] = [torch.cat(batches[-2:])]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def batch_schedule(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    *,
    epochs: int,
    steps: int | None = None,
    min_batch: int = 1,
    lengths: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """Index batches for a round: `epochs` full epochs, or exactly `steps` steps.

    With `steps`, epochs follow each other (each reshuffled) until the count is reached.
    With `lengths` (one per sample), each epoch's batches are bucketed by length.
    """
    done = 0
    epoch = 0
    while (steps is None and epoch < epochs) or (steps is not None and done < steps):
        batches = (
            epoch_batches(n, batch_size, generator, min_batch)
            if lengths is None
            else bucketed_batches(lengths, batch_size, generator, min_batch)
        )
        for batch in batches:
            if steps is not None and done >= steps:
                return
            yield batch
            done += 1
        epoch += 1
