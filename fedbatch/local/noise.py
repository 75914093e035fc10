"""The gradient noise scale B_simple = tr(Σ)/|G|² (McCandlish et al. 2018), pure torch.

Two-batch estimates within one client, across clients, their running average, and an exact
per-example reference (torch.func) for small models. See docs/science.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedbatch.local.probes import eval_mode, trainable_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def two_batch_estimates(
    grad_small_sq: float, grad_big_sq: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """Unbiased (|G|², tr(Σ)) from |G_B|² of mean gradients at two batch sizes, same weights.

    Uses E|G_B|² = |G|² + tr(Σ)/B:  |G|² ≈ (B_big·|G_big|² − B_small·|G_small|²)/(B_big −
    B_small) and tr(Σ) ≈ (|G_small|² − |G_big|²)/(1/B_small − 1/B_big). Single estimates are
    noisy (|G|² can come out negative); average many before dividing (`NoiseScaleEMA`).
    `b_big` may be `math.inf` (then |G_big|² is |G|² itself).
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    inv_small, inv_big = 1.0 / b_small, 1.0 / b_big
    gap = inv_small - inv_big
    # (B_big·Gb − B_small·Gs)/(B_big − B_small), written with 1/B so that B_big = inf works.
    grad_sq = (inv_small * grad_big_sq - inv_big * grad_small_sq) / gap
    trace = (grad_small_sq - grad_big_sq) / gap
    return grad_sq, trace


@dataclass
class NoiseScaleEMA:
    """Running averages of |G|² and tr(Σ) estimates, kept apart; B_simple = their ratio.

    `decay` β: exponential moving average, bias-corrected like Adam (divided by 1 − βᵗ);
    β = 0 keeps the last estimate only. None: plain running mean of every estimate. The
    ratio of averages is stable where the average of the per-step ratios is not (single
    |G|² estimates scatter around, and below, zero). Updates with a non-finite value are
    ignored. The averaging weights also give the estimate's uncertainty: the effective
    number of draws averaged and a delta-method standard error of the ratio.
    """

    decay: float | None = 0.99
    count: int = 0
    _grad_sq: float = field(default=0.0, repr=False)
    _trace: float = field(default=0.0, repr=False)
    _weight: float = field(default=0.0, repr=False)
    # Σ w², Σ w²g², Σ w²gt, Σ w²t² over the draws (g = |G|², t = tr Σ estimates).
    _sq_weight: float = field(default=0.0, repr=False)
    _sq_moments: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) or None, got {self.decay}")

    def update(self, grad_sq: float, trace: float) -> None:
        """Add one pair of estimates (e.g. from `two_batch_estimates`)."""
        if not (math.isfinite(grad_sq) and math.isfinite(trace)):
            return
        keep, add = (1.0, 1.0) if self.decay is None else (self.decay, 1.0 - self.decay)
        self._grad_sq = keep * self._grad_sq + add * grad_sq
        self._trace = keep * self._trace + add * trace
        self._weight = keep * self._weight + add  # = 1 − βᵗ, or t for the running mean
        keep2, add2 = keep * keep, add * add
        self._sq_weight = keep2 * self._sq_weight + add2
        gg, gt, tt = self._sq_moments
        self._sq_moments = (
            keep2 * gg + add2 * grad_sq * grad_sq,
            keep2 * gt + add2 * grad_sq * trace,
            keep2 * tt + add2 * trace * trace,
        )
        self.count += 1

    @property
    def grad_sq(self) -> float:
        """The averaged |G|² estimate (nan before any update)."""
        return self._grad_sq / self._weight if self._weight > 0 else float("nan")

    @property
    def trace(self) -> float:
        """The averaged tr(Σ) estimate (nan before any update)."""
        return self._trace / self._weight if self._weight > 0 else float("nan")

    @property
    def b_simple(self) -> float:
        """trace / grad_sq; nan with no data or a non-positive |G|² average."""
        grad_sq = self.grad_sq
        if not grad_sq > 0:
            return float("nan")
        return self.trace / grad_sq

    @property
    def draws(self) -> float:
        """The effective number of estimates averaged, (Σw)²/Σw² (the count for a mean;
        at most (1 + β)/(1 − β) for an EMA)."""
        return self._weight**2 / self._sq_weight if self._sq_weight > 0 else 0.0

    @property
    def standard_error(self) -> float:
        """Delta-method standard error of `b_simple` from the draws' spread (nan with fewer
        than two effective draws or no B_simple).

        With R = Σwt/Σwg, R − R* ≈ Σw(t − R*g)/Σwg, so Var R ≈ Σw²(t − Rg)²/(Σwg)², times
        n/(n − 1) for the residuals' lost degree of freedom (n = `draws`).
        """
        ratio, n = self.b_simple, self.draws
        if math.isnan(ratio) or n <= 1.0:
            return float("nan")
        gg, gt, tt = self._sq_moments
        residual = max(tt - 2.0 * ratio * gt + ratio * ratio * gg, 0.0)
        return math.sqrt(residual * n / (n - 1.0)) / self._grad_sq


def _grad_sq(
    model: nn.Module, params: list[torch.Tensor], loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
) -> float:
    """|∇ loss_fn(model(x), y)|² over `params`, via autograd.grad (leaves .grad alone)."""
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(sum(g.double().pow(2).sum() for g in grads if g is not None))


def _effective_size(b: float, n: int) -> float:
    """B' with Var(mean of B drawn without replacement from n) = S²/B', i.e. 1/B − 1/n."""
    inverse = 1.0 / b - 1.0 / n
    return math.inf if inverse <= 0 else 1.0 / inverse


def within_client_noise(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    b_small: int,
    b_big: int,
    generator: torch.Generator,
    *,
    finite_population: bool = True,
) -> tuple[float, float]:
    """One two-batch (|G|², tr(Σ)) estimate on (x, y) at the current weights.

    Draws b_big distinct samples (without replacement, as in an epoch); the small batch is
    their first b_small. No optimizer step, .grad untouched, gradients in eval mode (no
    dropout, no BatchNorm buffer updates), the model's modes restored afterwards.

    finite_population=True treats (x, y) as the whole population, the local dataset whose
    loss local training minimizes: the batch sizes enter as 1/B − 1/n (without-replacement
    variance), which makes both estimates unbiased for `exact_noise(model, loss_fn, x, y)`.
    False uses the plain formula: then |G|² is unbiased for the data distribution's gradient
    of which (x, y) is a sample. tr(Σ) is the same either way.
    """
    n = len(x)
    if not 1 <= b_small < b_big <= n:
        raise ValueError(f"need 1 <= b_small < b_big <= {n} samples, got {b_small}, {b_big}")
    params = trainable_parameters(model)
    index = torch.randperm(n, generator=generator)[:b_big].to(x.device)
    small = index[:b_small]
    with eval_mode(model):
        small_sq = _grad_sq(model, params, loss_fn, x[small], y[small])
        big_sq = _grad_sq(model, params, loss_fn, x[index], y[index])
    if finite_population:
        return two_batch_estimates(
            small_sq, big_sq, _effective_size(b_small, n), _effective_size(b_big, n)
        )
    return two_batch_estimates(small_sq, big_sq, b_small, b_big)


def exact_noise(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, chunk: int = 256
) -> tuple[float, float]:
    """Exact (|G|², tr(Σ)) on (x, y) from per-example gradients (torch.func vmap + grad).

    G = mean of the per-example gradients g_i; tr(Σ) = Σᵢ|g_i − G|² / (n − 1), the unbiased
    (n/(n−1)-corrected) sample variance, which is what `within_client_noise` estimates
    without bias. In eval mode (modes restored); `chunk` examples at a time bound memory
    (chunk × parameters floats). Raises ValueError for BatchNorm models: with batch
    statistics a per-example gradient is undefined.
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError("exact_noise: per-example gradients are undefined with BatchNorm")
    n = len(x)
    if n < 2:
        raise ValueError(f"exact_noise needs at least 2 examples, got {n}")
    trainable = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    frozen |= dict(model.named_buffers())

    def example_loss(
        params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
    ) -> torch.Tensor:
        out = functional_call(model, (params, frozen), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    total_sq = torch.zeros((), dtype=torch.float64, device=x.device)
    with eval_mode(model):
        for start in range(0, n, chunk):
            grads = per_example(trainable, x[start : start + chunk], y[start : start + chunk])
            flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], 1).double()
            total = total + flat.sum(0)
            total_sq = total_sq + flat.pow(2).sum()
    mean = total / n
    grad_sq = float(mean.pow(2).sum())
    trace = max(0.0, (float(total_sq) - n * grad_sq) / (n - 1))
    return grad_sq, trace


def across_client_estimates(
    client_grads_sq: Sequence[float],
    client_sizes: Sequence[int],
    mean_grad_sq: float,
    population: int | None = None,
) -> tuple[float, float]:
    """Two-batch (|G|², tr(Σ)) from one federated probe round at the same global weights.

    `client_grads_sq[k]` = |g_k|² of client k's mean gradient over its batch of b_k samples
    (the small batches); `mean_grad_sq` = |ḡ|² of the mean gradient over all those samples
    (the size-weighted average of the g_k: the big batch). Uses the equal-batch formula with
    B_small = mean b_k, |G_small|² = mean |g_k|² and B_big = Σ b_k (exact for equal b_k).

    `population` N, the pooled training data's size, makes the estimates unbiased for
    `exact_noise` on that pooled data: batches drawn without replacement from N enter as
    1/B − 1/N (when the probe covers all N samples, ḡ is the pooled gradient itself).
    None: the plain formula, for an unbounded data distribution.

    Assumes every client's batch is drawn from the same distribution (IID). Under non-IID
    data the client gradients differ in expectation too, so tr(Σ) also counts that
    between-client variance and B_simple comes out larger than the pooled data's.
    """
    k = len(client_grads_sq)
    if k != len(client_sizes):
        raise ValueError(f"{k} gradient norms but {len(client_sizes)} client sizes")
    if k < 2:
        raise ValueError(f"across-client estimates need at least 2 clients, got {k}")
    b_big = float(sum(client_sizes))
    b_small = b_big / k
    if population is not None:
        if population < b_big:
            raise ValueError(f"population {population} is smaller than the probe's {b_big:g}")
        b_small, b_big = _effective_size(b_small, population), _effective_size(b_big, population)
    return two_batch_estimates(sum(client_grads_sq) / k, mean_grad_sq, b_small, b_big)
