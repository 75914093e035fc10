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


def gradient_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all parameters' gradients together, as a 0-d tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def layer_gradient_norms(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each parameter tensor's gradient L2 norm (0 where it has none), as one tensor."""
    zero = torch.zeros((), device=params[0].device) if params else torch.zeros(())
    return torch.stack([p.grad.norm() if p.grad is not None else zero for p in params])


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
