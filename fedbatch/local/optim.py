"""Client optimizers by name (pure torch, no Flower)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedbatch.config import ClientConfig


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: ClientConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer named by `client.optimizer`, at learning rate `lr` (default client.lr)."""
    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay
    name = cfg.optimizer
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            params, lr=lr, momentum=cfg.momentum, nesterov=name == "nesterov", weight_decay=wd
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")
