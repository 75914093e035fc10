"""A client's probes at the round's starting weights, by name (pure torch, no Flower).

The server decides which probes are due in a round (`monitor.*` frequencies) and every
sampled client runs the same ones, so their metric keys agree across clients.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import nn
from torch.nn import functional as F

from fedbatch.config import MonitorConfig
from fedbatch.local.noise import exact_noise, within_client_noise
from fedbatch.local.sharpness import epsilon_sharpness, hessian_top_eigenvalue

START_PROBES = ("noise_scale", "noise_exact", "sharpness", "hessian")
NAN = float("nan")


def probe_keys(probes: Collection[str]) -> list[str]:
    """The metric keys the given probes produce."""
    keys = {
        "noise_scale": ["noise_grad_sq", "noise_trace"],
        "noise_exact": ["exact_grad_sq", "exact_trace"],
        "sharpness": ["sharpness"],
        "hessian": ["hessian_top"],
    }
    return [k for probe in START_PROBES if probe in probes for k in keys[probe]]


def measure_at_weights(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    probes: Collection[str],
    monitor: MonitorConfig,
    batch_size: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """Run the due probes on this client's data; weights and gradients are left as found.

    The noise scale uses a small batch of the round's B and a big one of `noise_big`
    (default 8·B), capped by the data; curvature probes use at most `probe_samples`
    samples. A probe that cannot run on this data (too few samples) reports nan.
    """
    out = dict.fromkeys(probe_keys(probes), NAN)
    n = len(x)
    if "noise_scale" in probes:
        small = min(batch_size, n - 1)
        big = min(monitor.noise_big or 8 * batch_size, n)
        if 1 <= small < big:
            grad_sq, trace = within_client_noise(
                model, F.cross_entropy, x, y, small, big, generator
            )
            out |= {"noise_grad_sq": grad_sq, "noise_trace": trace}
    if "noise_exact" in probes and n >= 2:
        grad_sq, trace = exact_noise(model, F.cross_entropy, x, y)
        out |= {"exact_grad_sq": grad_sq, "exact_trace": trace}
    if {"sharpness", "hessian"} & set(probes):
        index = torch.randperm(n, generator=generator)[: monitor.probe_samples].to(x.device)
        xs, ys = x[index], y[index]
        if "sharpness" in probes:
            out["sharpness"] = epsilon_sharpness(
                model,
                F.cross_entropy,
                xs,
                ys,
                epsilon=monitor.sharpness_epsilon,
                steps=monitor.sharpness_steps,
            )
        if "hessian" in probes:
            out["hessian_top"] = hessian_top_eigenvalue(
                model,
                F.cross_entropy,
                xs,
                ys,
                iterations=monitor.hessian_iterations,
                generator=generator,
            )
    return {k: (v if math.isfinite(v) else NAN) for k, v in out.items()}


def mean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The mean loss gradient over (x, y) at the current weights, .grad untouched."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()  # a probe must not move BatchNorm statistics or drop units
    try:
        loss = F.cross_entropy(model(x), y)
        return [g.detach() for g in torch.autograd.grad(loss, params)]
    finally:
        model.train(was_training)
