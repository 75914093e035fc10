"""Optimizers and learning-rate rules, checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedbatch.config import ClientConfig
from fedbatch.local.optim import (
    LARS,
    FunctionalSGD,
    adascale_gain,
    build_optimizer,
    lars_trust_ratio,
    loop_optimizer,
    lr_at,
    scaled_lr,
)

# --- LARS ----------------------------------------------------------------------------------


def test_trust_ratio_matches_formula():
    w = torch.tensor([[3.0, 4.0]])  # ‖w‖ = 5
    g = torch.tensor([[0.9, 1.2]])  # ‖g‖ = 1.5
    # 0.02 · 5 / (1.5 + 0.1 · 5) = 0.05
    ratio = lars_trust_ratio(w, g, trust_coefficient=0.02, weight_decay=0.1, eps=0.0)
    assert ratio.shape == ()
    assert ratio.item() == pytest.approx(0.05)
    no_wd = lars_trust_ratio(w, g, trust_coefficient=0.02, weight_decay=0.0, eps=0.0)
    assert no_wd.item() == pytest.approx(0.1 / 1.5)


def test_trust_ratio_is_one_for_zero_weight_or_grad():
    w = torch.tensor([[3.0, 4.0]])
    zero = torch.zeros(1, 2)
    assert lars_trust_ratio(zero, w, 0.001, 0.1).item() == 1.0
    assert lars_trust_ratio(w, zero, 0.001, 0.1).item() == 1.0


def _linear(weight: list[float], bias: float) -> nn.Linear:
    layer = nn.Linear(2, 1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight], dtype=torch.float64))
        layer.bias.fill_(bias)
    return layer


def _set_grads(layer: nn.Linear, weight_grad: list[float], bias_grad: float) -> None:
    layer.weight.grad = torch.tensor([weight_grad], dtype=torch.float64)
    layer.bias.grad = torch.tensor([bias_grad], dtype=torch.float64)


def test_lars_two_steps_match_hand_computed_updates():
    lr, m, wd, tc = 0.1, 0.9, 0.1, 0.02
    layer = _linear([3.0, 4.0], 0.5)
    opt = LARS(layer.parameters(), lr=lr, momentum=m, weight_decay=wd, trust_coefficient=tc, eps=0)

    # Step 1: ratio 0.05 (as above); d = 0.05 · (g + 0.1 w) = 0.05 · [1.2, 1.6] = [0.06, 0.08].
    _set_grads(layer, [0.9, 1.2], 0.2)
    opt.step()
    assert layer.weight[0].tolist() == pytest.approx([2.994, 3.992])
    # The bias is plain momentum SGD without weight decay: 0.5 − 0.1 · 0.2.
    assert layer.bias.item() == pytest.approx(0.48)

    # Step 2: w = 0.998 · [3, 4], ‖w‖ = 4.99; ratio = 0.02 · 4.99 / (1.5 + 0.499).
    _set_grads(layer, [0.9, 1.2], -0.1)
    opt.step()
    ratio = 0.02 * 4.99 / (1.5 + 0.499)
    d = [ratio * (0.9 + 0.1 * 2.994), ratio * (1.2 + 0.1 * 3.992)]
    buf = [0.9 * 0.06 + d[0], 0.9 * 0.08 + d[1]]
    assert layer.weight[0].tolist() == pytest.approx([2.994 - lr * buf[0], 3.992 - lr * buf[1]])
    # Bias buffer 0.9 · 0.2 − 0.1 = 0.08.
    assert layer.bias.item() == pytest.approx(0.48 - lr * 0.08)


def test_lars_without_momentum_or_decay_keeps_no_state():
    layer = _linear([3.0, 4.0], 0.5)
    opt = LARS(layer.parameters(), lr=1.0, momentum=0.0, trust_coefficient=0.02, eps=0)
    _set_grads(layer, [0.9, 1.2], 0.2)
    layer.bias.grad = None  # skipped
    opt.step()
    # ratio = 0.02 · 5 / 1.5; w − ratio · g
    ratio = 0.1 / 1.5
    assert layer.weight[0].tolist() == pytest.approx([3 - ratio * 0.9, 4 - ratio * 1.2])
    assert layer.bias.item() == 0.5
    assert not opt.state


def test_build_optimizer_lars_uses_client_config():
    model = nn.Linear(3, 2)
    cfg = ClientConfig(optimizer="lars", momentum=0.8, weight_decay=0.01, trust_coefficient=0.05)
    opt = build_optimizer(model.parameters(), cfg, lr=2.0)
    assert isinstance(opt, LARS)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (2.0, 0.8, 0.01)
    assert group["trust_coefficient"] == 0.05


# --- AdamW ---------------------------------------------------------------------------------


def test_adamw_decays_weights_decoupled():
    w0 = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    p = nn.Parameter(w0.clone())
    opt = build_optimizer([p], ClientConfig(optimizer="adamw", weight_decay=0.5), lr=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    p.grad = torch.zeros_like(p)
    opt.step()
    # Zero gradient: the Adam step is 0, only the decoupled decay w ← w − lr·wd·w acts.
    assert p.tolist() == pytest.approx((w0 * (1 - 0.1 * 0.5)).tolist())


def test_unknown_optimizer_raises():
    with pytest.raises(ValueError, match="lion"):
        build_optimizer(nn.Linear(2, 1).parameters(), ClientConfig(optimizer="lion"))


# --- learning-rate scaling -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        ("none", 256, 0.1),
        ("linear", 256, 0.8),
        ("sqrt", 256, 0.1 * math.sqrt(8)),
        ("linear", 16, 0.05),
        ("sqrt", 8, 0.05),
    ],
)
def test_scaled_lr(rule, batch, expected):
    assert scaled_lr(0.1, batch, 32, rule) == pytest.approx(expected)


def test_scaled_lr_rejects_unknown_rule_and_bad_batch():
    with pytest.raises(ValueError, match="cubic"):
        scaled_lr(0.1, 64, 32, "cubic")
    with pytest.raises(ValueError):
        scaled_lr(0.1, 0, 32, "linear")


# --- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize(("step", "expected"), [(0, 0.0), (5, 0.05), (10, 0.1), (20, 0.1)])
def test_linear_warmup_from_zero(step, expected):
    lr = lr_at(step, lr=0.1, total_steps=100, warmup_steps=10)
    assert lr == pytest.approx(expected)


def test_warmup_start_is_a_fraction_of_the_target():
    kw = dict(lr=0.1, total_steps=100, warmup_steps=10, warmup_start=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.01)
    assert lr_at(5, **kw) == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert lr_at(10, **kw) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 1.0), (9.9, 1.0), (10, 0.1), (15, 0.1), (20, 0.01), (99, 0.01)]
)
def test_step_schedule(step, expected):
    kw = dict(lr=1.0, total_steps=100, schedule="step", gamma=0.1)
    assert lr_at(step, milestones=(10, 20), **kw) == pytest.approx(expected)
    assert lr_at(step, milestones=[20, 10], **kw) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),
        (25, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2),
        (50, 0.55),
        (100, 0.1),
        (150, 0.1),
    ],
)
def test_cosine_schedule(step, expected):
    lr = lr_at(step, lr=1.0, total_steps=100, schedule="cosine", min_lr=0.1)
    assert lr == pytest.approx(expected)


def test_warmup_multiplies_the_cosine_schedule():
    kw = dict(lr=1.0, total_steps=100, schedule="cosine", warmup_steps=10)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)) / 2)
    assert lr_at(10, **kw) == pytest.approx((1 + math.cos(math.pi * 0.1)) / 2)


def test_lr_at_rejects_unknown_schedule_and_empty_cosine():
    with pytest.raises(ValueError, match="linear"):
        lr_at(0, lr=0.1, total_steps=10, schedule="linear")
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(0, lr=0.1, total_steps=0, schedule="cosine")


# --- AdaScale ------------------------------------------------------------------------------


def test_adascale_gain_formula():
    # σ₀² = tr(Σ)/B₀ = 96/32 = 3, S = 128/32 = 4: (3 + 1) / (3/4 + 1) = 16/7
    assert adascale_gain(96.0, 1.0, 32, 128) == pytest.approx(16 / 7)


def test_adascale_gain_known_values_from_the_noise_scale():
    # r = (B_simple/B₀ + 1)/(B_simple/B + 1): B_simple = B₀ = 32, B = 128 → 2/1.25 = 1.6;
    # B_simple = 128 → 5/2 = 2.5 (the per-example trace in place of σ₀² gave 3.67 and 3.91).
    assert adascale_gain(32.0, 1.0, 32, 128) == pytest.approx(1.6)
    assert adascale_gain(128.0 * 0.01, 0.01, 32, 128) == pytest.approx(2.5)


def test_adascale_gain_limits():
    assert adascale_gain(3.0, 1.0, 8, 8) == pytest.approx(1.0)
    assert adascale_gain(3.0, 0.0, 8, 64) == pytest.approx(8.0)  # pure noise
    assert adascale_gain(0.0, 0.0, 8, 64) == 8.0
    assert adascale_gain(0.0, 2.0, 8, 64) == pytest.approx(1.0)  # no noise


def test_adascale_gain_clamps_negative_estimates():
    assert adascale_gain(-1.0, 2.0, 8, 32) == pytest.approx(1.0)
    assert adascale_gain(2.0, -1.0, 8, 32) == pytest.approx(4.0)
    assert 1.0 <= adascale_gain(1e-12, 1e12, 8, 32) <= 4.0
    with pytest.raises(ValueError):
        adascale_gain(1.0, 1.0, 8, 4)


# --- the functional SGD step ---------------------------------------------------------------

SGD_SETTINGS = {
    "plain": {},
    "momentum-decay": {"momentum": 0.9, "weight_decay": 0.01},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "dampening-maximize": {"momentum": 0.5, "dampening": 0.3, "maximize": True},
    "foreach": {"momentum": 0.9, "foreach": True},
    "foreach-no-momentum": {"weight_decay": 0.01, "foreach": True},
    "not-fused": {"momentum": 0.9, "fused": False},
}


def _sgd_run(step_with_functional: bool, settings: dict) -> tuple[list[torch.Tensor], dict]:
    """Six steps of a two-group model whose second layer gets no gradient in steps 2–3
    and whose LR changes after step 3; the weights and the optimizer's state_dict."""
    torch.manual_seed(0)
    first, second = nn.Linear(5, 4), nn.Linear(4, 3)
    groups = [{"params": first.parameters()}, {"params": second.parameters(), "lr": 0.2}]
    optimizer = torch.optim.SGD(groups, lr=0.1, **settings)
    loop = FunctionalSGD(optimizer) if step_with_functional else optimizer
    x = torch.randn(8, 5)
    for i in range(6):
        loop.zero_grad()
        hidden = first(x).tanh()
        out = hidden.sum() if i in (1, 2) else second(hidden).pow(2).sum()
        out.backward()
        if i == 3:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        loop.step()
    weights = [p.detach().clone() for p in (*first.parameters(), *second.parameters())]
    return weights, optimizer.state_dict()


@pytest.mark.parametrize("settings", SGD_SETTINGS.values(), ids=SGD_SETTINGS.keys())
def test_functional_sgd_step_is_torch_sgd_bit_for_bit(settings):
    # Guard for torch.optim.sgd.sgd: the same update and state as SGD.step, including a
    # parameter without a gradient on some steps and an LR changed between steps.
    expected_weights, expected_state = _sgd_run(False, settings)
    weights, state = _sgd_run(True, settings)
    assert all(torch.equal(a, b) for a, b in zip(weights, expected_weights, strict=True))
    assert state["param_groups"] == expected_state["param_groups"]
    assert state["state"].keys() == expected_state["state"].keys()
    for key, entry in expected_state["state"].items():
        buffer = entry["momentum_buffer"]
        got = state["state"][key]["momentum_buffer"]
        assert (got is None and buffer is None) or torch.equal(got, buffer)


def test_functional_sgd_step_continues_a_loaded_state():
    # optimizer_state=keep saves state_dict() and loads it into next round's optimizer.
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3)
    results = []
    for functional in (False, True):
        with torch.no_grad():
            for p, value in zip(model.parameters(), start, strict=True):
                p.copy_(value)
        saved = None
        for _ in range(2):  # two rounds of two steps, a fresh optimizer each round
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            if saved is not None:
                optimizer.load_state_dict(saved)
            loop = FunctionalSGD(optimizer) if functional else optimizer
            for _ in range(2):
                loop.zero_grad()
                model(x).pow(2).sum().backward()
                loop.step()
            saved = optimizer.state_dict()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_the_loop_takes_the_functional_path_for_plain_sgd_only():
    params = list(nn.Linear(2, 2).parameters())
    assert isinstance(loop_optimizer(torch.optim.SGD(params, lr=0.1)), FunctionalSGD)
    for other in (
        torch.optim.Adam(params, lr=0.1),
        torch.optim.SGD(params, lr=0.1, fused=True),
        torch.optim.SGD(params, lr=0.1, differentiable=True),
        LARS(params, lr=0.1),
    ):
        assert loop_optimizer(other) is other


def test_functional_zero_grad_clears_every_gradient_of_every_group():
    first, second = nn.Linear(2, 2), nn.Linear(2, 1)
    groups = [{"params": first.parameters()}, {"params": second.parameters()}]
    loop = FunctionalSGD(torch.optim.SGD(groups, lr=0.1))
    second(first(torch.ones(1, 2))).sum().backward()
    loop.zero_grad()
    assert all(p.grad is None for p in (*first.parameters(), *second.parameters()))


def test_functional_sgd_passes_what_sgd_step_passes(monkeypatch):
    # On a GPU, `fused=False` with `foreach=None` makes torch's functional sgd take the
    # single-tensor path as SGD.step does; without the key it would choose foreach.
    import fedbatch.local.optim as optim

    seen = []
    monkeypatch.setattr(optim, "functional_sgd", lambda *args, **kwargs: seen.append(kwargs))
    layer = nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    FunctionalSGD(torch.optim.SGD(layer.parameters(), lr=0.1, fused=False)).step()
    assert seen[0]["fused"] is False and seen[0]["foreach"] is None
