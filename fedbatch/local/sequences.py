"""Padded token rows for the text task: lengths, trimming and counting real tokens.

A text dataset holds right-padded rows (`fedbatch.data.text`): targets are -100 after a
sequence's end. Everything here follows from that one convention; classification data
(1-D targets) passes through unchanged.
"""

from __future__ import annotations

import torch

from fedbatch.data.text import IGNORE_INDEX


def sequence_lengths(y: torch.Tensor) -> torch.Tensor | None:
    """Per row, its real positions (on the CPU, so batches are trimmed without a device
    sync); None for classification targets."""
    if y.ndim == 1:
        return None
    return (y != IGNORE_INDEX).sum(dim=1).cpu()


def real_targets(targets: torch.Tensor) -> torch.Tensor | int:
    """How many targets a (micro-)batch's mean loss averages over: its rows, or its real
    tokens (a device tensor, no sync)."""
    if targets.ndim == 1:
        return targets.shape[0]
    return (targets != IGNORE_INDEX).sum()


def trim_to(inputs: torch.Tensor, targets: torch.Tensor, width: int) -> tuple[torch.Tensor, ...]:
    """A batch of rows cut to its longest sequence: padding beyond it costs compute only."""
    return inputs[:, :width], targets[:, :width]


def trim_to_longest(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`trim_to` the batch's own longest row (one device sync: evaluation only)."""
    width = int((targets != IGNORE_INDEX).sum(dim=1).max())
    return trim_to(inputs, targets, max(width, 1))
