"""Sharpness and curvature of the loss around the current weights (pure torch, no Flower).

ε-sharpness (Keskar et al. 2017) by projected ascent in a box, and the top Hessian eigenvalue
by power iteration on Hessian-vector products. Both run in eval mode on the (x, y) given
(pass a subsample), restore the model's modes and leave weights and .grad untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedbatch.local.probes import eval_mode, trainable_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def epsilon_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float = 1e-3,
    steps: int = 5,
    lr: float | None = None,
) -> float:
    """Keskar's ε-sharpness: (max_{z∈C_ε} f(w + z) − f(w)) / (1 + f(w)) · 100.

    C_ε = {z : |z_i| ≤ ε(|w_i| + 1)}, the box scaled per coordinate. The max is approximated
    by `steps` steps of projected ascent from z = 0: sign-gradient steps of 2.5/steps of
    each coordinate's box half-width (lr=None), or gradient steps z += lr·∇f (lr given);
    the largest loss seen (f(w) included, so the result is ≥ 0) counts. Weights are restored
    bit-exactly afterwards.
    """
    params = trainable_parameters(model)
    base = [p.detach().clone() for p in params]
    radius = [epsilon * (b.abs() + 1.0) for b in base]
    shift = [torch.zeros_like(b) for b in base]

    def loss_and_grads(need_grads: bool) -> tuple[float, list[torch.Tensor | None]]:
        if not need_grads:
            with torch.no_grad():
                return float(loss_fn(model(x), y)), []
        loss = loss_fn(model(x), y)
        return float(loss.detach()), list(torch.autograd.grad(loss, params, allow_unused=True))

    try:
        with eval_mode(model):
            base_loss, grads = loss_and_grads(steps > 0)
            best = base_loss
            for step in range(steps):
                with torch.no_grad():
                    for p, b, r, z, g in zip(params, base, radius, shift, grads, strict=True):
                        if g is None:
                            continue
                        z += 2.5 / steps * r * g.sign() if lr is None else lr * g
                        torch.minimum(z, r, out=z)
                        torch.maximum(z, -r, out=z)
                        p.copy_(b + z)
                loss, grads = loss_and_grads(step < steps - 1)
                best = max(best, loss)
    finally:
        with torch.no_grad():
            for p, b in zip(params, base, strict=True):
                p.copy_(b)
    return (best - base_loss) / (1.0 + base_loss) * 100.0


def hessian_top_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    iterations: int = 20,
    generator: torch.Generator | None = None,
    tol: float = 1e-4,
) -> float:
    """The Hessian eigenvalue of largest magnitude (signed), by power iteration.

    Hessian-vector products by double backprop (autograd.grad with create_graph=True) of
    loss_fn(model(x), y) over the trainable parameters; the estimate is the Rayleigh
    quotient vᵀHv. Stops after `iterations` products or once it changes by ≤ tol relative.
    The start vector comes from `generator` (default: a fixed seed, leaving the global RNG
    alone). Weights and .grad are untouched.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    params = trainable_parameters(model)
    with eval_mode(model):
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # Parameters whose gradient does not depend on any weight have zero Hessian rows.
        pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        pairs = [(p, g) for p, g in pairs if g.requires_grad]
        if not pairs:
            return 0.0
        inputs = [p for p, _ in pairs]
        outputs = [g for _, g in pairs]
        vector = [torch.randn(p.shape, generator=generator).to(p) for p in inputs]
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in vector))
        vector = [v / norm for v in vector]
        eigenvalue = float("nan")
        for i in range(iterations):
            products = torch.autograd.grad(
                outputs, inputs, grad_outputs=vector, retain_graph=True, allow_unused=True
            )
            hv = [
                torch.zeros_like(p) if h is None else h.detach()
                for p, h in zip(inputs, products, strict=True)
            ]
            estimate = sum(float((h * v).sum()) for h, v in zip(hv, vector, strict=True))
            norm = math.sqrt(sum(float(h.pow(2).sum()) for h in hv))
            if norm == 0.0:
                return 0.0
            vector = [h / norm for h in hv]
            converged = i > 0 and abs(estimate - eigenvalue) <= tol * abs(estimate)
            eigenvalue = estimate
            if converged:
                break
    return eigenvalue
