"""Many clients' CNN as one network: their convolutions grouped by client.

Pure torch, no Flower. For a CNN made of nn.Sequential containers and the layers below,
k clients' forward pass is one pass of a wider network: spatial activations are laid out
(rows, k·C, *spatial), client j's channels at j·C…(j+1)·C−1, so that a convolution with
the clients' weights stacked to (k·C_out, C_in, *kernel) and groups=k computes every
client's convolution, GroupNorm with k·G groups every client's GroupNorm, and pooling and
activations act channel by channel. After the Flatten, activations are (k, rows, features)
and a Linear is a batched matrix product. Each output equals the client's own network's
output (the same operations in the same order, on oneDNN's grouped kernels).

vmap over `functional_call` builds the same grouped convolutions, but for all clients at
once and in the default (NCHW) layout: on the CPU a step of the `pfl` benchmark CNN took
1.4–2× the plain loop's time that way, 0.7–0.8× this way (one thread, 50 clients of B=10:
simulations/bench/README.md). The gains: channels_last weights, as the plain loop's, and
a few clients per pass (ROWS_PER_PASS rows in all), whose activations stay in the cache
through the backward pass. A ReLU right before a max-pool is applied after it (max
commutes with ReLU, the gradients route through the same elements): the same numbers, on
a quarter of the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

Params = dict[str, torch.Tensor]
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
ELEMENTWISE = (nn.Identity, nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
SPATIAL = (*CONVOLUTIONS, *POOLS, *ELEMENTWISE, *BATCH_NORMS, nn.GroupNorm)
DENSE = (nn.Linear, *ELEMENTWISE, nn.BatchNorm1d)
ROWS_PER_PASS = 64  # on the CPU: 5–10 clients of B=10 ran fastest on the pfl CNN

Layer = tuple[str, nn.Module]


def leaf_layers(model: nn.Module) -> list[Layer] | None:
    """The model's layers in the order its forward pass runs them, with their names, when
    every container is a plain nn.Sequential (or one that only adds checkpointing, off);
    None otherwise."""
    layers: list[Layer] = []

    def walk(prefix: str, module: nn.Module) -> bool:
        children = list(module.named_children())
        if not children:
            layers.append((prefix, module))
            return True
        if not isinstance(module, nn.Sequential) or getattr(module, "checkpointing", False):
            return False
        overrides = type(module).forward is not nn.Sequential.forward
        if overrides and not hasattr(module, "checkpointing"):
            return False
        return all(walk(f"{prefix}.{name}" if prefix else name, child)
                   for name, child in children)  # fmt: skip

    return layers if walk("", model) else None


def groupable(model: nn.Module) -> bool:
    """Whether `grouped_logits` can run `model`: spatial layers, a Flatten, dense layers,
    all of the kinds above (BatchNorm with running statistics and a momentum, no ghost
    batches; no dropout), with a convolution or a BatchNorm (other models: vmap)."""
    layers = _after_unflatten(leaf_layers(model))
    if layers is None:
        return False
    flattens = [i for i, (_, m) in enumerate(layers) if type(m) is nn.Flatten]
    if len(flattens) != 1:
        return False
    before, after = layers[: flattens[0]], layers[flattens[0] + 1 :]
    kinds_ok = all(_known(m, SPATIAL) for _, m in before) and all(
        _known(m, DENSE) for _, m in after
    )
    return kinds_ok and any(isinstance(m, (*CONVOLUTIONS, *BATCH_NORMS)) for _, m in layers)


def _known(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    if isinstance(module, CONVOLUTIONS):
        return module.padding_mode == "zeros"
    if isinstance(module, BATCH_NORMS):  # exactly these classes: not a ghost BatchNorm
        return (type(module) in BATCH_NORMS and module.track_running_stats
                and module.momentum is not None and type(module) in kinds)  # fmt: skip
    return isinstance(module, kinds)


def grouped_logits(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    buffers: Params | None = None,
    real: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits (k, rows, classes) of k clients' copies of `model` with stacked weights
    `params` ({name: [k, ...]}) on their inputs `x` (k, rows, *sample shape). BatchNorm
    layers normalize each client's batch by its rows where `real` (k, rows; default all)
    is true, and update that client's running statistics in `buffers` (stacked as
    `params`) in place, as `model.train()` does; a client with no real rows keeps its."""
    layers = leaf_layers(model)
    assert layers is not None
    if _after_unflatten(layers) is not layers:  # cnn1d: samples unflattened to (1, length)
        x = x.unflatten(2, layers[0][1].unflattened_size)
        layers = layers[1:]
    k, rows = x.shape[:2]
    h = x.transpose(0, 1).reshape(rows, k * x.shape[2], *x.shape[3:])
    spatial = True
    for name, module in _pool_before_relu(layers):
        if type(module) is nn.Flatten:
            h = h.reshape(rows, k, -1).transpose(0, 1)
            spatial = False
        elif isinstance(module, BATCH_NORMS):
            assert buffers is not None, "BatchNorm needs the clients' running statistics"
            mask = torch.ones(k, rows, dtype=torch.bool, device=h.device) if real is None else real
            statistics = _weights(buffers, name)
            h = batch_norm(module, _weights(params, name), statistics, h, mask, spatial)
        elif spatial:
            h = _spatial(module, _weights(params, name), h, k)
        elif isinstance(module, nn.Linear):
            weights = _weights(params, name)
            weight = weights["weight"].transpose(1, 2)
            bias = weights.get("bias")
            h = torch.bmm(h, weight) if bias is None else torch.baddbmm(bias[:, None], h, weight)
        else:
            h = module(h)
    return h


def _after_unflatten(layers: list[Layer] | None) -> list[Layer] | None:
    """The layers after a first nn.Unflatten of the sample axis; all of them otherwise."""
    if layers and isinstance(layers[0][1], nn.Unflatten) and layers[0][1].dim == 1:
        return layers[1:]
    return layers


def _pool_before_relu(layers: list[Layer]) -> list[Layer]:
    ordered = list(layers)
    for i in range(len(ordered) - 1):
        pair = ordered[i][1], ordered[i + 1][1]
        if isinstance(pair[0], nn.ReLU) and isinstance(pair[1], (nn.MaxPool1d, nn.MaxPool2d)):
            ordered[i], ordered[i + 1] = ordered[i + 1], ordered[i]
    return ordered


def _weights(params: Params, name: str) -> Params:
    return {key[len(name) + 1 :]: value for key, value in params.items()
            if key.startswith(name + ".")}  # fmt: skip


def _spatial(module: nn.Module, weights: Params, h: torch.Tensor, k: int) -> torch.Tensor:
    if isinstance(module, CONVOLUTIONS):
        weight = weights["weight"].flatten(0, 1)
        if module.weight.dim() == 4 and not module.weight.is_contiguous():
            weight = weight.contiguous(memory_format=torch.channels_last)  # as the model's
        bias = weights["bias"].flatten() if "bias" in weights else None
        convolve: Callable[..., torch.Tensor] = F.conv2d if weight.dim() == 4 else F.conv1d
        return convolve(
            h, weight, bias, module.stride, module.padding, module.dilation, k * module.groups
        )
    if isinstance(module, nn.GroupNorm):
        weight, bias = weights.get("weight"), weights.get("bias")
        return F.group_norm(
            h,
            k * module.num_groups,
            None if weight is None else weight.flatten(),
            None if bias is None else bias.flatten(),
            module.eps,
        )
    return module(h)


def batch_norm(
    module: nn.Module,
    weights: Params,
    statistics: Params,
    h: torch.Tensor,
    real: torch.Tensor,
    spatial: bool,
) -> torch.Tensor:
    """`module`'s training-mode BatchNorm for each client, over its real rows only, on
    activations (rows, k·C, *spatial) or (k, rows, C)."""
    k, rows = real.shape
    # (rows, k, C, positions): statistics per client and channel over axes 0 and 3.
    z = h.reshape(rows, k, -1, math.prod(h.shape[2:])) if spatial else h.transpose(0, 1)[..., None]
    mask = real.T[:, :, None, None].to(z.dtype)
    count = real.sum(dim=1) * z.shape[3]
    if z.shape[3] == 1 and bool((count == 1).any()):
        raise ValueError("BatchNorm cannot train on a batch of one sample")
    divisor = count.clamp(min=1)[:, None].to(z.dtype)
    mean = (z * mask).sum(dim=(0, 3)) / divisor
    centered = z - mean[None, :, :, None]
    variance = (centered * mask).square().sum(dim=(0, 3)) / divisor
    scale = torch.rsqrt(variance + module.eps)
    if "weight" in weights:
        scale = scale * weights["weight"]
    out = centered * scale[None, :, :, None]
    if "bias" in weights:
        out = out + weights["bias"][None, :, :, None]
    with torch.no_grad():
        active = (count > 0)[:, None]
        unbiased = variance * divisor / (divisor - 1).clamp(min=1)
        for key, batch_value in (("running_mean", mean), ("running_var", unbiased)):
            running = statistics[key]
            updated = (1 - module.momentum) * running + module.momentum * batch_value
            running.copy_(torch.where(active, updated, running))
        statistics["num_batches_tracked"].add_(active[:, 0].long())
    return out.reshape(h.shape) if spatial else out[..., 0].transpose(0, 1)


def client_chunks(clients: int, rows: int, device: torch.device) -> Iterator[slice]:
    """Slices of at most ROWS_PER_PASS rows' worth of clients on the CPU, all on a GPU."""
    per_pass = clients if device.type != "cpu" else max(1, ROWS_PER_PASS // max(rows, 1))
    for start in range(0, clients, per_pass):
        yield slice(start, min(start + per_pass, clients))
