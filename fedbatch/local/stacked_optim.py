"""torch.optim's built-in client optimizers as one update of many clients' stacked weights.

Pure torch, no Flower. Every tensor holds the clients along its first axis; each client
has its own learning rate and weight decay (tensors of one value per client). The updates
are those of torch.optim.SGD (dampening 0), Adam, AdamW, RMSprop and Adagrad at the
hyperparameters `fedbatch.local.optim` builds them with (their defaults besides lr and
weight_decay), written in the order of torch's single-tensor code paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Params = dict[str, torch.Tensor]
ADAPTIVE = ("adam", "adamw", "rmsprop", "adagrad")
BETAS = (0.9, 0.999)  # Adam's and AdamW's defaults
ADAM_EPS, RMSPROP_ALPHA, RMSPROP_EPS, ADAGRAD_EPS = 1e-8, 0.99, 1e-8, 1e-10


@dataclass(frozen=True)
class SGDRule:
    """torch.optim.SGD's momentum (dampening 0), shared by the clients."""

    momentum: float = 0.0
    nesterov: bool = False


@dataclass(frozen=True)
class AdaptiveRule:
    """One of ADAPTIVE, at torch's default betas, alpha and eps."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in ADAPTIVE:
            raise ValueError(f"unknown adaptive optimizer {self.name!r}; expected {ADAPTIVE}")


UpdateRule = SGDRule | AdaptiveRule


@torch.no_grad()
def update(
    params: Params,
    grads: Params,
    state: dict[str, Params],
    step: int,
    lr: torch.Tensor,
    decay: torch.Tensor | None,
    rule: UpdateRule,
) -> None:
    """Every client's optimizer step `step` (1 for the first), in place. `state` holds the
    optimizer's per-tensor state (momentum buffers, moment estimates) between calls."""
    for key, param in params.items():
        shape = (-1,) + (1,) * (param.dim() - 1)
        client_lr = lr.view(shape)
        client_decay = None if decay is None else decay.view(shape)
        own = state.setdefault(key, {})
        if isinstance(rule, SGDRule):
            _sgd(param, grads[key], own, client_lr, client_decay, rule)
        else:
            _adaptive(param, grads[key], own, step, client_lr, client_decay, rule.name)


def _sgd(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: Params,
    lr: torch.Tensor,
    decay: torch.Tensor | None,
    rule: SGDRule,
) -> None:
    if decay is not None:
        grad = grad + decay * param
    if rule.momentum:
        buffer = state.get("momentum")
        if buffer is None:
            buffer = state["momentum"] = grad.clone()
        else:
            buffer.mul_(rule.momentum).add_(grad)
        grad = grad + rule.momentum * buffer if rule.nesterov else buffer
    param.addcmul_(lr, grad, value=-1.0)


def _adaptive(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: Params,
    step: int,
    lr: torch.Tensor,
    decay: torch.Tensor | None,
    name: str,
) -> None:
    if decay is not None and name == "adamw":  # decoupled: the weights shrink first
        param.mul_(1 - lr * decay)
    elif decay is not None:
        grad = grad + decay * param
    if name in ("adam", "adamw"):
        beta1, beta2 = BETAS
        average = state.setdefault("average", torch.zeros_like(param))
        squares = state.setdefault("squares", torch.zeros_like(param))
        average.lerp_(grad, 1 - beta1)
        squares.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denominator = (squares.sqrt() / (1 - beta2**step) ** 0.5).add_(ADAM_EPS)
        param.sub_(step_size * (average / denominator))
    elif name == "rmsprop":
        squares = state.setdefault("squares", torch.zeros_like(param))
        squares.mul_(RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - RMSPROP_ALPHA)
        param.sub_(lr * (grad / squares.sqrt().add_(RMSPROP_EPS)))
    else:  # adagrad, lr_decay 0 and initial accumulator 0
        total = state.setdefault("sum", torch.zeros_like(param))
        total.addcmul_(grad, grad, value=1)
        param.sub_(lr * (grad / total.sqrt().add_(ADAGRAD_EPS)))
