"""Measurements of the optimization itself (pure torch, no Flower).

Gradient and weight norms and the similarity of client updates live here; the gradient noise
scale is in `fedbatch.local.noise` and sharpness/curvature in `fedbatch.local.sharpness`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def trainable_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The parameters that require gradients, in `model.parameters()` order."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode (no dropout, no BatchNorm buffer updates), then restore it.

    Restores every submodule's own flag, so mixed train/eval states survive too.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def weight_norm(params: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all tensors together (accumulated in float64)."""
    total = sum(float(p.detach().double().pow(2).sum()) for p in params)
    return math.sqrt(total)


def update_norm(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """‖after − before‖₂ over all tensors together, e.g. a client's update in one round."""
    total = sum(
        float((a.detach().double() - b.detach().double()).pow(2).sum())
        for b, a in zip(before, after, strict=True)
    )
    return math.sqrt(total)


def cosine_similarities(updates: Sequence[Sequence[torch.Tensor]]) -> tuple[float, float]:
    """Mean and min pairwise cosine similarity of flattened client updates (client drift).

    Each update is a sequence of tensors (one per parameter). A zero update counts as
    orthogonal to every other (cosine 0). (nan, nan) with fewer than two updates.
    """
    if len(updates) < 2:
        return float("nan"), float("nan")
    flat = [torch.cat([t.detach().double().reshape(-1).cpu() for t in u]) for u in updates]
    units = [v / n if (n := torch.linalg.vector_norm(v)) > 0 else v for v in flat]
    cosines = [float(a @ b) for a, b in itertools.combinations(units, 2)]
    return sum(cosines) / len(cosines), min(cosines)
