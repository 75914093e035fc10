"""Measurements of the optimization itself (pure torch, no Flower)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gradient_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all parameters' gradients together, as a 0-d tensor (no sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
