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
once and in the default (NCHW) layout: on the CPU that ran at 1.8–2× the plain loop's
time for the `pfl` benchmark CNN, this at 0.8–1.0× (simulations/bench/README.md). The
gains: channels_last weights, as the plain loop's, and a few clients per pass
(`rows_per_pass` rows in all), whose activations stay in the cache through the backward
pass. A ReLU right before a max-pool is applied after it (max commutes with ReLU, the
gradients route through the same elements): the same numbers, on a quarter of the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

Params = dict[str, torch.Tensor]
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
ELEMENTWISE = (nn.Identity, nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU)
SPATIAL = (*CONVOLUTIONS, *POOLS, *ELEMENTWISE, nn.GroupNorm, nn.Flatten)
DENSE = (nn.Linear, *ELEMENTWISE)
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
    """Whether `grouped_logits` can run `model`: convolutions, then a Flatten, then dense
    layers, all of the kinds above (no BatchNorm, no dropout)."""
    layers = _after_unflatten(leaf_layers(model))
    if layers is None or not any(isinstance(m, CONVOLUTIONS) for _, m in layers):
        return False
    flattens = [i for i, (_, m) in enumerate(layers) if type(m) is nn.Flatten]
    if len(flattens) != 1:
        return False
    before, after = layers[: flattens[0]], layers[flattens[0] + 1 :]
    convs_ok = all(isinstance(m, SPATIAL) and type(m) is not nn.Flatten for _, m in before)
    convs_ok = convs_ok and all(
        m.padding_mode == "zeros" for _, m in before if isinstance(m, CONVOLUTIONS)
    )
    return convs_ok and all(isinstance(m, DENSE) for _, m in after)


def grouped_logits(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits (k, rows, classes) of k clients' copies of `model` with stacked weights
    `params` ({name: [k, ...]}) on their inputs `x` (k, rows, *sample shape)."""
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


def client_chunks(clients: int, rows: int, device: torch.device) -> Iterator[slice]:
    """Slices of at most ROWS_PER_PASS rows' worth of clients on the CPU, all on a GPU."""
    per_pass = clients if device.type != "cpu" else max(1, ROWS_PER_PASS // max(rows, 1))
    for start in range(0, clients, per_pass):
        yield slice(start, min(start + per_pass, clients))
