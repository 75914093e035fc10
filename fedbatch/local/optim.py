"""Client optimizers and learning-rate rules by name (pure torch, no Flower).

Each built-in optimizer is a builder `(params, cfg, lr) -> Optimizer` named in
`fedbatch.registry.OPTIMIZERS`; a `_target_` optimizer is its class, called with the
parameters, `lr` (and `weight_decay` when client.weight_decay > 0) and the config's keys.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.optim.sgd import sgd as functional_sgd

from fedbatch.config import ClientConfig
from fedbatch.registry import OPTIMIZERS, TargetError, one_line

Params = Iterable[torch.nn.Parameter]

LR_SCHEDULES = ("constant", "step", "cosine")
LR_SCALING = ("none", "linear", "sqrt")


def _ratio_from_norms(
    w_norm: torch.Tensor,
    g_norm: torch.Tensor,
    trust_coefficient: float,
    weight_decay: float,
    eps: float,
) -> torch.Tensor:
    ratio = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    # A zero weight (fresh init) or zero gradient would freeze or blow up the layer.
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def lars_trust_ratio(
    weight: torch.Tensor,
    grad: torch.Tensor,
    trust_coefficient: float,
    weight_decay: float,
    eps: float = 1e-9,
) -> torch.Tensor:
    """LARS's trust ratio tc·‖w‖ / (‖g‖ + wd·‖w‖ + eps), or 1 when ‖w‖ or ‖g‖ is 0.

    A 0-dim tensor on the weight's device (no host sync).
    """
    return _ratio_from_norms(
        torch.linalg.vector_norm(weight),
        torch.linalg.vector_norm(grad),
        trust_coefficient,
        weight_decay,
        eps,
    )


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017): momentum SGD, per-tensor LR.

    For a tensor w with gradient g: d = ratio·(g + wd·w) with ratio = `lars_trust_ratio`,
    buf ← momentum·buf + d (buf = d on the first step), w ← w − lr·buf. The buffer holds no
    lr, so a schedule's change of lr acts at once. Tensors with ndim <= 1 (biases, norm
    affine parameters) get neither the trust ratio nor weight decay (plain momentum SGD),
    the common practice since LARS was introduced.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-9,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0 or eps < 0:
            raise ValueError(
                "LARS needs lr, momentum, weight_decay, eps >= 0 and trust_coefficient > 0"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, momentum = group["weight_decay"], group["momentum"]
            layers = [i for i, p in enumerate(params) if p.ndim > 1]
            updates = list(grads)
            if layers:
                w = [params[i] for i in layers]
                g = [grads[i] for i in layers]
                w_norms = torch._foreach_norm(w)
                g_norms = torch._foreach_norm(g)
                ratios = [
                    _ratio_from_norms(wn, gn, group["trust_coefficient"], wd, group["eps"])
                    for wn, gn in zip(w_norms, g_norms, strict=True)
                ]
                d = torch._foreach_add(g, w, alpha=wd) if wd else [x.clone() for x in g]
                torch._foreach_mul_(d, ratios)
                for i, di in zip(layers, d, strict=True):
                    updates[i] = di
            if momentum:
                bufs = []
                for p, u in zip(params, updates, strict=True):
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = u.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(u)
                    bufs.append(state["momentum_buffer"])
                updates = bufs
            torch._foreach_add_(params, updates, alpha=-group["lr"])
        return loss


class FunctionalSGD:
    """A torch.optim.SGD's `zero_grad()` and `step()` for the training loop, without
    `Optimizer`'s wrappers, whose profiler records, hook loops and compile guards cost
    ~40 µs a step on a 2-core CPU: 8% of a tiny MLP's step. The step is torch's documented
    functional `torch.optim.sgd.sgd` with the arguments `SGD.step` passes it, the momentum
    buffers kept in `optimizer.state` as SGD keeps them, so the update is bit for bit
    SGD's and `state_dict`, a kept optimizer state and a schedule's LR changes behave as
    with `optimizer.step()`. Optimizer step hooks are not called (fedbatch registers none
    on the optimizers it builds; a global one, `register_optimizer_step_pre_hook`, is
    skipped for SGD too)."""

    def __init__(self, optimizer: torch.optim.SGD) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        """`optimizer.zero_grad()`: every gradient to None."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        state = self.optimizer.state
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            momentum = group["momentum"]
            buffers = [state[p].get("momentum_buffer") for p in params] if momentum != 0 else []
            functional_sgd(
                params,
                grads,
                buffers,
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                has_sparse_grad=any(g.is_sparse for g in grads),
                foreach=group["foreach"],
                # As SGD.step passes it: an explicit False keeps torch from choosing
                # foreach on a GPU (torch versions before SGD's `fused` have no key).
                **({"fused": group["fused"]} if "fused" in group else {}),
            )
            if momentum != 0:  # the first step makes the buffers
                for p, buffer in zip(params, buffers, strict=True):
                    state[p]["momentum_buffer"] = buffer


def loop_optimizer(optimizer: torch.optim.Optimizer) -> FunctionalSGD | torch.optim.Optimizer:
    """What the training loop calls `zero_grad()` and `step()` on: `FunctionalSGD` for
    torch.optim's SGD (the `sgd`, `momentum` and `nesterov` builders; not fused or
    differentiable), otherwise the optimizer itself."""
    if type(optimizer) is not torch.optim.SGD:
        return optimizer
    groups = optimizer.param_groups
    if any(group.get("fused") or group.get("differentiable") for group in groups):
        return optimizer
    return FunctionalSGD(optimizer)


def sgd(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)


def momentum(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def nesterov(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
    )


def adam(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def adamw(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def rmsprop(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)


def adagrad(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adagrad(params, lr=lr, weight_decay=cfg.weight_decay)


def lars(params: Params, cfg: ClientConfig, lr: float) -> torch.optim.Optimizer:
    return LARS(
        params,
        lr=lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        trust_coefficient=cfg.trust_coefficient,
    )


def build_optimizer(
    params: Params, cfg: ClientConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer `client.optimizer` names, at learning rate `lr` (default client.lr)."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer_target is None:
        return OPTIMIZERS.resolve(cfg.optimizer)(params, cfg, lr)
    optimizer_class = OPTIMIZERS.target(cfg.optimizer_target)
    # Only when set, so that an optimizer without weight decay works with the default 0.
    decay = {"weight_decay": cfg.weight_decay} if cfg.weight_decay > 0 else {}
    kwargs = {"lr": lr, **decay, **cfg.optimizer_kwargs}
    try:
        return optimizer_class(params, **kwargs)
    except Exception as error:  # the user's constructor: one line, whatever it raised
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        problem = f"cannot be built with {given}: {one_line(error)}"
        raise TargetError(OPTIMIZERS.target_key, cfg.optimizer_target, problem) from None


# --- learning rates ------------------------------------------------------------------------


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """`lr` tuned at `base_batch_size`, moved to `batch_size`.

    none: lr; linear: lr·B/B_base (Goyal et al. 2017); sqrt: lr·√(B/B_base).
    """
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {base_batch_size}")
    k = batch_size / base_batch_size
    if rule == "none":
        return lr
    if rule == "linear":
        return lr * k
    if rule == "sqrt":
        return lr * math.sqrt(k)
    raise ValueError(f"unknown LR scaling rule {rule!r}; expected one of {LR_SCALING}")


def lr_at(
    step: float,
    *,
    lr: float,
    total_steps: float,
    schedule: str = "constant",
    warmup_steps: float = 0.0,
    warmup_start: float = 0.0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> float:
    """The learning rate at optimizer step `step` (counted from the start of training).

    constant: lr. step: lr·gamma^(number of milestones <= step).
    cosine: min_lr + (lr − min_lr)·(1 + cos(π·min(step/total_steps, 1)))/2.
    Linear warmup multiplies the schedule's value by
    warmup_start + (1 − warmup_start)·step/warmup_steps while step < warmup_steps, so it
    ramps from the fraction `warmup_start` of the schedule to the full schedule; the
    schedule itself runs from step 0, not from the end of warmup.
    """
    if schedule == "constant":
        target = lr
    elif schedule == "step":
        target = lr * gamma ** bisect_right(sorted(milestones), step)
    elif schedule == "cosine":
        if total_steps <= 0:
            raise ValueError(f"cosine schedule needs total_steps > 0, got {total_steps}")
        progress = min(max(step, 0.0) / total_steps, 1.0)
        target = min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0
    else:
        raise ValueError(f"unknown LR schedule {schedule!r}; expected one of {LR_SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        target *= warmup_start + (1.0 - warmup_start) * max(step, 0.0) / warmup_steps
    return target


def adascale_gain(trace_cov: float, grad_sq: float, base_batch: float, batch: float) -> float:
    """AdaScale's gain r = (σ₀² + |G|²) / (σ₀²/S + |G|²) (Johnson et al. 2020).

    σ₀² = tr(Σ)/B₀ is the variance of the *base-batch* gradient (Σ per-example, B₀ the batch
    the LR was tuned for) and S = B/B₀; in noise-scale terms r = (B_simple/B₀ + 1) /
    (B_simple/B + 1). r = 1 at S = 1 and r → S as |G|² → 0 (pure noise; also returned when
    both are 0). Negative (noisy) estimates are clamped at 0 first, and r to [1, S].
    """
    if base_batch <= 0 or batch < base_batch:
        raise ValueError(f"AdaScale needs 0 < base_batch <= batch, got {base_batch}, {batch}")
    scale = batch / base_batch
    base_variance, g = max(trace_cov, 0.0) / base_batch, max(grad_sq, 0.0)
    if base_variance == 0 and g == 0:
        return float(scale)
    return float(min(max((base_variance + g) / (base_variance / scale + g), 1.0), scale))
