"""Probes checked on numbers: noise scale (two-batch vs exact), sharpness, curvature, norms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedbatch.local.noise import (
    NoiseScaleEMA,
    across_client_estimates,
    exact_noise,
    two_batch_estimates,
    within_client_noise,
)
from fedbatch.local.probes import cosine_similarities, update_norm, weight_norm
from fedbatch.local.sharpness import epsilon_sharpness, hessian_top_eigenvalue


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(n: int = 2000, features: int = 10, classes: int = 4, seed: int = 0):
    """Gaussian blobs around random class centres: a small synthetic classification set."""
    g = _generator(seed)
    centres = torch.randn(classes, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, features, generator=g), y


def _mlp(seed: int = 0, features: int = 10, classes: int = 4, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 32), nn.Tanh(), nn.Linear(32, classes)).to(dtype)


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _bit_equal(model: nn.Module, snapshot: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, s) for p, s in zip(model.parameters(), snapshot, strict=True))


# --- gradient noise scale ------------------------------------------------------------------


def test_two_batch_estimates_recover_truth_from_expected_norms():
    grad_sq, trace = 2.5, 40.0
    for b_small, b_big in [(8, 128), (1, 2), (32, 1000)]:
        small = grad_sq + trace / b_small  # E|G_B|² = |G|² + tr(Σ)/B
        big = grad_sq + trace / b_big
        est = two_batch_estimates(small, big, b_small, b_big)
        assert est == pytest.approx((grad_sq, trace), rel=1e-12)
    # B_big = inf: the big "batch" is the true gradient.
    assert two_batch_estimates(7.5, 2.5, 8, math.inf) == pytest.approx((2.5, 40.0), rel=1e-12)
    with pytest.raises(ValueError):
        two_batch_estimates(1.0, 1.0, 8, 8)


def test_noise_scale_ema_is_a_ratio_of_averages():
    mean = NoiseScaleEMA(decay=None)
    assert math.isnan(mean.grad_sq) and math.isnan(mean.trace) and math.isnan(mean.b_simple)
    mean.update(1.0, 2.0)
    mean.update(3.0, 2.0)
    mean.update(float("nan"), 5.0)  # ignored
    assert (mean.count, mean.grad_sq, mean.trace) == (2, 2.0, 2.0)
    assert mean.b_simple == 1.0  # the average of the ratios would be (2 + 2/3) / 2

    ema = NoiseScaleEMA(decay=0.5)
    ema.update(1.0, 4.0)
    assert (ema.grad_sq, ema.trace) == (1.0, 4.0)  # bias-corrected: no pull toward 0
    ema.update(3.0, 8.0)
    # Adam-style: m₂ = 0.5·(0.5·1) + 0.5·3 = 1.75, divided by 1 − 0.5² = 0.75.
    assert ema.grad_sq == pytest.approx(1.75 / 0.75)
    assert ema.trace == pytest.approx((0.5 * 0.5 * 4 + 0.5 * 8) / 0.75)
    assert ema.b_simple == pytest.approx(ema.trace / ema.grad_sq)

    negative = NoiseScaleEMA(decay=None)
    negative.update(-0.5, 3.0)
    assert math.isnan(negative.b_simple)
    with pytest.raises(ValueError):
        NoiseScaleEMA(decay=1.0)


def test_exact_noise_matches_an_explicit_per_example_loop():
    x, y = _blobs(n=7, features=3, classes=2, seed=1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = x.double()
    params = list(model.parameters())
    grads = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    per_example = torch.stack(grads)
    mean = per_example.mean(0)
    expected_grad_sq = float(mean.pow(2).sum())
    expected_trace = float((per_example - mean).pow(2).sum()) / (len(x) - 1)

    grad_sq, trace = exact_noise(model, F.cross_entropy, x, y, chunk=3)  # 3 chunks: 3, 3, 1
    assert grad_sq == pytest.approx(expected_grad_sq, rel=1e-10)
    assert trace == pytest.approx(expected_trace, rel=1e-10)


def test_exact_noise_refuses_batchnorm():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x, y = _blobs(n=8, features=3, classes=2)
    with pytest.raises(ValueError, match="BatchNorm"):
        exact_noise(model, F.cross_entropy, x, y)


def test_two_batch_noise_scale_is_within_10_percent_of_exact():
    x, y = _blobs(n=2000, seed=0)
    model = _mlp(seed=0)
    grad_sq, trace = exact_noise(model, F.cross_entropy, x, y)
    exact = trace / grad_sq
    running = NoiseScaleEMA(decay=None)
    generator = _generator(100)
    for _ in range(1000):
        running.update(*within_client_noise(model, F.cross_entropy, x, y, 8, 128, generator))
    assert running.b_simple == pytest.approx(exact, rel=0.10)
    assert running.grad_sq == pytest.approx(grad_sq, rel=0.10)
    assert running.trace == pytest.approx(trace, rel=0.10)


def test_within_client_noise_leaves_the_model_alone():
    x, y = _blobs(n=200, seed=2)
    model = nn.Sequential(nn.Linear(10, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4))
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    weights = _snapshot(model)
    est = within_client_noise(model, F.cross_entropy, x, y, 4, 64, _generator(0))
    assert all(math.isfinite(v) for v in est)
    assert model.training and all(m.training for m in model.modules())
    assert _bit_equal(model, weights)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    with pytest.raises(ValueError):
        within_client_noise(model, F.cross_entropy, x, y, 64, 64, _generator(0))


def test_within_client_noise_with_the_whole_dataset_as_big_batch_is_exact_for_g():
    """With b_big = n the big batch is the full gradient: |G|² comes out exact (B'_big = ∞)."""
    x, y = _blobs(n=300, seed=3)
    model = _mlp(seed=3, dtype=torch.float64)
    x = x.double()
    grad_sq, _ = exact_noise(model, F.cross_entropy, x, y)
    est_grad_sq, _ = within_client_noise(model, F.cross_entropy, x, y, 10, 300, _generator(1))
    assert est_grad_sq == pytest.approx(grad_sq, rel=1e-9)


def test_across_client_noise_scale_on_iid_clients_is_within_10_percent_of_exact():
    """8 IID clients, each a disjoint batch of 16 at the same weights, over 300 probe rounds."""
    x, y = _blobs(n=2000, seed=7)
    model = _mlp(seed=7)
    grad_sq, trace = exact_noise(model, F.cross_entropy, x, y)
    params = list(model.parameters())

    def flat_grad(index: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x[index]), y[index])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    running = NoiseScaleEMA(decay=None)
    generator = _generator(7)
    for _ in range(300):
        batches = torch.randperm(len(x), generator=generator)[: 8 * 16].split(16)
        grads = [flat_grad(b) for b in batches]
        mean_sq = float(torch.stack(grads).mean(0).pow(2).sum())
        client_sq = [float(g.pow(2).sum()) for g in grads]
        running.update(*across_client_estimates(client_sq, [16] * 8, mean_sq))
    assert running.b_simple == pytest.approx(trace / grad_sq, rel=0.10)


def test_across_client_estimates_by_hand():
    # IID clients with b = 16, |G|² = 1, tr(Σ) = 32: E|g_k|² = 1 + 32/16 = 3 and the mean
    # gradient over 4·16 = 64 samples has E|ḡ|² = 1 + 32/64 = 1.5.
    est = across_client_estimates([2.0, 4.0, 3.5, 2.5], [16, 16, 16, 16], 1.5)
    assert est == pytest.approx((1.0, 32.0), rel=1e-12)
    # Unequal sizes: B_small = mean (16), B_big = sum (32), small norm = mean (5.0).
    grad_sq, trace = across_client_estimates([4.0, 6.0], [8, 24], 2.0)
    assert grad_sq == pytest.approx((32 * 2.0 - 16 * 5.0) / (32 - 16))
    assert trace == pytest.approx((5.0 - 2.0) / (1 / 16 - 1 / 32))
    with pytest.raises(ValueError):
        across_client_estimates([1.0], [8], 1.0)
    with pytest.raises(ValueError):
        across_client_estimates([1.0, 2.0], [8], 1.0)


# --- sharpness and curvature ---------------------------------------------------------------


class _Bowl(nn.Module):
    """loss = scale·|w|² for every sample: a quadratic with known ε-box maximum."""

    def __init__(self, w: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.scale * self.w.pow(2).sum()).expand(len(x))


def _mean(out: torch.Tensor, _targets: torch.Tensor) -> torch.Tensor:
    return out.mean()


def _bowl_sharpness(w: torch.Tensor, scale: float, epsilon: float) -> float:
    """Keskar's value: the max of scale·|w + z|² over |z_i| ≤ ε(|w_i| + 1) is at the corner."""
    base = scale * float(w.pow(2).sum())
    top = scale * float((w.abs() + epsilon * (w.abs() + 1)).pow(2).sum())
    return (top - base) / (1 + base) * 100


def test_epsilon_sharpness_on_quadratics():
    w = torch.tensor([0.5, -1.0, 2.0, -0.25], dtype=torch.float64)
    x, y = torch.zeros(3, 1), torch.zeros(3)
    values = {}
    for scale in (0.0, 1.0, 10.0):
        model = _Bowl(w, scale)
        values[scale] = epsilon_sharpness(model, _mean, x, y, epsilon=1e-2)
        assert values[scale] == pytest.approx(_bowl_sharpness(w, scale, 1e-2), rel=1e-9)
        assert torch.equal(model.w.detach(), w)
    assert values[0.0] == 0.0  # flat: constant loss
    assert 0.0 < values[1.0] < values[10.0]  # sharper quadratic, larger sharpness
    # Gradient steps large enough to reach the box corner give the same maximum.
    stepped = epsilon_sharpness(_Bowl(w, 1.0), _mean, x, y, epsilon=1e-2, steps=3, lr=10.0)
    assert stepped == pytest.approx(values[1.0], rel=1e-9)


def test_epsilon_sharpness_restores_weights_bit_exactly():
    x, y = _blobs(n=64, seed=4)
    model = _mlp(seed=4)
    model.train()
    weights = _snapshot(model)
    value = epsilon_sharpness(model, F.cross_entropy, x, y, epsilon=5e-2, steps=5)
    assert value > 0.0
    assert _bit_equal(model, weights)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def _exact_hessian(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        pieces = vector.split([s.numel() for s in shapes])
        params = {n: v.view(s) for n, v, s in zip(names, pieces, shapes, strict=True)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_hessian_top_eigenvalue_of_linear_regression():
    g = _generator(5)
    n, d, k = 50, 4, 2
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.2])
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    torch.manual_seed(5)
    model = nn.Linear(d, k).double()
    weights = _snapshot(model)
    # MSE averages over n·k entries: H = 2/(n·k)·[X 1]ᵀ[X 1] ⊗ I.
    augmented = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    analytic = float(torch.linalg.eigvalsh(2 / (n * k) * augmented.T @ augmented).max())
    exact = float(torch.linalg.eigvalsh(_exact_hessian(model, F.mse_loss, x, y)).max())
    assert exact == pytest.approx(analytic, rel=1e-10)
    top = hessian_top_eigenvalue(model, F.mse_loss, x, y, generator=_generator(0))
    assert top == pytest.approx(exact, rel=1e-3)
    assert _bit_equal(model, weights)
    assert all(p.grad is None for p in model.parameters())


def test_hessian_top_eigenvalue_of_a_small_mlp_is_the_largest_in_magnitude():
    x, y = _blobs(n=40, features=3, classes=3, seed=6)
    x = x.double()
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    eigenvalues = torch.linalg.eigvalsh(_exact_hessian(model, F.cross_entropy, x, y))
    exact = float(eigenvalues[eigenvalues.abs().argmax()])
    top = hessian_top_eigenvalue(model, F.cross_entropy, x, y, iterations=300, tol=1e-9)
    assert top == pytest.approx(exact, rel=1e-3)


# --- norms and client drift ----------------------------------------------------------------


def test_weight_and_update_norms():
    params = [torch.tensor([3.0, 4.0]), torch.tensor([[12.0]])]
    assert weight_norm(params) == pytest.approx(13.0)
    before = [torch.tensor([1.0, 1.0]), torch.tensor([[1.0]])]
    after = [torch.tensor([4.0, 5.0]), torch.tensor([[13.0]])]
    assert update_norm(before, after) == pytest.approx(13.0)
    assert update_norm(after, after) == 0.0


def test_cosine_similarities_by_hand():
    def update(a: float, b: float, c: float) -> list[torch.Tensor]:
        return [torch.tensor([a, b]), torch.tensor([c])]  # split across two "layers"

    e1, e2, both = update(1, 0, 0), update(0, 1, 0), update(1, 1, 0)
    mean, low = cosine_similarities([e1, e2, both])  # cosines 0, 1/√2, 1/√2
    assert mean == pytest.approx(math.sqrt(2) / 3)
    assert low == pytest.approx(0.0)
    assert cosine_similarities([e1, update(-2, 0, 0)]) == pytest.approx((-1.0, -1.0))
    assert cosine_similarities([e1, update(3, 0, 0)]) == pytest.approx((1.0, 1.0))
    assert cosine_similarities([e1, update(0, 0, 0)]) == (0.0, 0.0)  # zero update: orthogonal
    assert all(math.isnan(v) for v in cosine_similarities([e1]))
    assert all(math.isnan(v) for v in cosine_similarities([]))


def test_noise_scale_standard_error_and_draws_by_hand():
    # Two draws (g, t) = (1, 2), (3, 2): R = 4/4 = 1, residuals t − R·g = 1, −1, so the
    # ratio estimator's variance is s²/(n·ḡ²) = 2/(2·4) and its standard error 0.5.
    mean = NoiseScaleEMA(decay=None)
    mean.update(1.0, 2.0)
    assert mean.draws == 1.0 and math.isnan(mean.standard_error)
    mean.update(3.0, 2.0)
    assert mean.draws == 2.0
    assert mean.standard_error == pytest.approx(0.5)
    # an EMA with β = 0.5 weighs the draws 0.25, 0.5: (Σw)²/Σw² = 0.5625/0.3125 = 1.8
    ema = NoiseScaleEMA(decay=0.5)
    ema.update(1.0, 2.0)
    ema.update(3.0, 2.0)
    assert ema.draws == pytest.approx(1.8)
    assert NoiseScaleEMA(decay=0.0).draws == 0.0


def test_across_client_estimates_with_the_pooled_population_by_hand():
    # |G|² = 1, tr(Σ) = 32, 4 clients of b = 16 drawn without replacement from N = 128:
    # E|g_k|² = 1 + 32·(1/16 − 1/128) = 2.75 and E|ḡ|² = 1 + 32·(1/64 − 1/128) = 1.25.
    est = across_client_estimates([2.75] * 4, [16] * 4, 1.25, population=128)
    assert est == pytest.approx((1.0, 32.0), rel=1e-12)
    # The probe covers all N = 64 samples: ḡ is the pooled gradient, |G|² = |ḡ|² exactly.
    est = across_client_estimates([2.5] * 4, [16] * 4, 1.0, population=64)
    assert est == pytest.approx((1.0, 32.0), rel=1e-12)
    with pytest.raises(ValueError):
        across_client_estimates([2.5] * 4, [16] * 4, 1.0, population=32)
