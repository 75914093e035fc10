"""One client's round plan: B, LR scaling, LR per local step, AdaScale and regularization."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedbatch.config import build_config
from fedbatch.local.batch_sizing import NoiseEstimate, RoundPlan
from fedbatch.local.plan import plan_client_round


def _cfg(rounds: int = 3, **sections: Any):
    raw: dict[str, Any] = {"seed": 0, "rounds": rounds, "num_clients": 4, "clients_per_round": 2}
    return build_config(raw | sections)


def _plan(cfg, batch=None, gain=1.0, progress=0.0, n=100, mean=100.0, pid=0):
    batch = cfg.client.batch_size if batch is None else batch
    return plan_client_round(cfg, RoundPlan(batch, gain, progress), pid, n, mean)


def _lrs(plan, steps: int) -> list[float]:
    assert plan.lr_at is not None
    return [plan.lr_at(s) for s in range(steps)]


# --- LR scaling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "factor"), [("none", 1.0), ("linear", 2.0), ("sqrt", math.sqrt(2.0))]
)
def test_lr_scaling_uses_the_effective_batch(rule, factor):
    client = {"batch_size": 16, "accumulate": 4, "base_batch_size": 32, "lr": 0.1}
    cfg = _cfg(client=client | {"lr_scaling": rule})
    plan = _plan(cfg, n=1000)
    assert plan.batch_size == 16
    assert plan.effective_batch_size == 64  # k·B/B_base = 2
    assert plan.lr == pytest.approx(0.1 * factor, rel=1e-12)
    assert plan.lr_at is None  # no schedule, no warmup, no gain: constant
    assert plan.first_lr() == plan.lr


@pytest.mark.parametrize(("rule", "factor"), [("linear", 8.0), ("sqrt", math.sqrt(8.0))])
def test_lr_scaling_follows_the_rounds_scheduled_batch(rule, factor):
    client = {"batch_size": 16, "accumulate": 2, "base_batch_size": 16, "lr": 0.05}
    cfg = _cfg(client=client | {"lr_scaling": rule})
    plan = _plan(cfg, batch=64, n=1000)
    assert (plan.batch_size, plan.effective_batch_size) == (64, 128)
    assert plan.lr == pytest.approx(0.05 * factor, rel=1e-12)


def test_linear_scaling_below_the_base_batch_lowers_the_lr():
    cfg = _cfg(client={"batch_size": 8, "base_batch_size": 32, "lr": 0.4, "lr_scaling": "linear"})
    assert _plan(cfg).lr == pytest.approx(0.1, rel=1e-12)


def test_effective_batch_never_exceeds_the_clients_data():
    client = {"batch_size": 32, "accumulate": 4, "base_batch_size": 32, "lr_scaling": "linear"}
    cfg = _cfg(client=client)
    plan = _plan(cfg, n=50, mean=50.0)
    assert plan.steps_per_round == 2  # one step per epoch, of all 50 samples
    assert plan.effective_batch_size <= 50  # samples per optimizer step
    assert plan.lr == pytest.approx(0.1 * 50 / 32)


def test_steps_per_round_counts_optimizer_steps_of_the_effective_batch():
    cfg = _cfg(client={"batch_size": 10, "accumulate": 3, "epochs": 2})
    assert _plan(cfg, n=100).steps_per_round == 2 * math.ceil(100 / 30)
    fixed = _cfg(client={"batch_size": 10, "accumulate": 3, "steps": 5})
    assert _plan(fixed, n=100).steps_per_round == 5


# --- warmup --------------------------------------------------------------------------------


def test_warmup_steps_ramps_from_warmup_start():
    client = {"batch_size": 25, "epochs": 5, "lr": 0.2, "warmup_steps": 10, "warmup_start": 0.1}
    plan = _plan(_cfg(client=client))
    assert plan.steps_per_round == 20
    lrs = _lrs(plan, 20)
    assert lrs[0] == pytest.approx(0.1 * 0.2)
    assert lrs[5] == pytest.approx(0.2 * (0.1 + 0.9 * 0.5))  # half way
    assert lrs[5] == pytest.approx((lrs[0] + 0.2) / 2)
    assert lrs[:10] == pytest.approx([0.2 * (0.1 + 0.09 * s) for s in range(10)])
    assert lrs[10:] == pytest.approx([0.2] * 10)
    assert plan.first_lr() == pytest.approx(0.02)


def test_warmup_from_base_starts_at_the_unscaled_lr():
    """Goyal et al.: B = 8 × 32 with linear scaling targets 8 · 0.1 = 0.8, reached from the
    small-batch 0.1 over 10 steps: 0.1 + 0.07·s (hand-computed)."""
    client = {"batch_size": 256, "base_batch_size": 32, "lr": 0.1, "lr_scaling": "linear"}
    client |= {"epochs": 5, "warmup_steps": 10, "warmup_start": "base"}
    plan = _plan(_cfg(client=client), n=2560)
    lrs = _lrs(plan, 12)
    assert lrs[:10] == pytest.approx([0.1 + 0.07 * s for s in range(10)])
    assert lrs[10:] == pytest.approx([0.8, 0.8])


def test_warmup_epochs_counts_steps_of_the_effective_batch():
    client = {"batch_size": 16, "accumulate": 2, "epochs": 3, "lr": 0.1, "warmup_epochs": 2}
    plan = _plan(_cfg(client=client), n=100)
    # ceil(100 / 32) = 4 steps per epoch → 8 warmup steps
    assert plan.steps_per_round == 12
    lrs = _lrs(plan, 12)
    assert lrs[:8] == pytest.approx([0.1 * s / 8 for s in range(8)])
    assert lrs[8:] == pytest.approx([0.1] * 4)
    single = _plan(_cfg(client=client | {"accumulate": 1}), n=100)
    # ceil(100 / 16) = 7 steps per epoch → 14 warmup steps
    assert single.lr_at(7) == pytest.approx(0.1 * 7 / 14)


def test_warmup_continues_across_rounds_from_progress_times_steps():
    client = {"batch_size": 25, "epochs": 1, "lr": 0.3, "warmup_steps": 10}
    cfg = _cfg(client=client)
    first = _plan(cfg, progress=0.0)
    second = _plan(cfg, progress=1.0)
    third = _plan(cfg, progress=2.0)
    assert first.steps_per_round == 4
    assert _lrs(first, 4) == pytest.approx([0.3 * s / 10 for s in range(4)])
    assert _lrs(second, 4) == pytest.approx([0.3 * s / 10 for s in range(4, 8)])
    assert _lrs(third, 4) == pytest.approx([0.3 * 8 / 10, 0.3 * 9 / 10, 0.3, 0.3])


# --- schedules -----------------------------------------------------------------------------


def test_step_schedule_milestones_are_rounds():
    client = {
        "batch_size": 25,
        "epochs": 1,
        "lr": 0.5,
        "lr_schedule": "step",
        "lr_milestones": [2, 3],
        "lr_gamma": 0.1,
    }
    cfg = _cfg(rounds=3, client=client)
    expected = {0: 0.5, 1: 0.05, 2: 0.005}
    for progress, lr in expected.items():
        for n in (100, 50, 175):  # 4, 2 and 7 steps per round: the same rounds
            plan = _plan(cfg, progress=float(progress), n=n)
            assert _lrs(plan, plan.steps_per_round) == pytest.approx([lr] * plan.steps_per_round)


def test_cosine_runs_over_rounds_times_steps():
    client = {
        "batch_size": 25,
        "epochs": 1,
        "lr": 0.4,
        "lr_schedule": "cosine",
        "min_lr": 0.01,
    }
    cfg = _cfg(rounds=4, client=client)
    total = 4 * 4

    def cosine(step: int) -> float:
        return 0.01 + (0.4 - 0.01) * (1 + math.cos(math.pi * step / total)) / 2

    for r in range(4):
        plan = _plan(cfg, progress=float(r))
        assert _lrs(plan, 4) == pytest.approx([cosine(4 * r + s) for s in range(4)], rel=1e-12)
    assert _plan(cfg, progress=0.0).lr_at(0) == pytest.approx(0.4)
    assert _plan(cfg, progress=2.0).lr_at(0) == pytest.approx((0.4 + 0.01) / 2)
    assert _plan(cfg, progress=4.0).lr_at(0) == pytest.approx(0.01)  # past the end: min_lr


# --- AdaScale ------------------------------------------------------------------------------


def test_adascale_gain_multiplies_a_constant_lr():
    cfg = _cfg(client={"batch_size": 25, "epochs": 1, "lr": 0.1})
    plan = _plan(cfg, gain=2.5, progress=1.0)
    assert plan.lr == pytest.approx(0.1)  # before the gain
    assert _lrs(plan, 4) == pytest.approx([0.25] * 4)
    assert plan.first_lr() == pytest.approx(0.25)


def test_adascale_advances_the_schedule_by_the_gain_per_step():
    client = {
        "batch_size": 25,
        "epochs": 1,
        "lr": 0.1,
        "lr_schedule": "step",
        "lr_milestones": [3],
        "lr_gamma": 0.5,
    }
    cfg = _cfg(rounds=4, client=client)
    plan = _plan(cfg, gain=2.5, progress=1.0)
    # schedule positions 4, 6.5, 9, 11.5; the milestone (round 3) is at step 8
    assert _lrs(plan, 4) == pytest.approx([0.25, 0.25, 0.125, 0.125])
    unscaled = _plan(cfg, gain=1.0, progress=1.0)  # positions 4..7: before the milestone
    assert _lrs(unscaled, 4) == pytest.approx([0.1] * 4)


def test_adascale_with_cosine_matches_the_formula():
    client = {"batch_size": 25, "epochs": 1, "lr": 0.2, "lr_schedule": "cosine"}
    cfg = _cfg(rounds=5, client=client)
    gain, progress = 1.5, 1.75
    plan = _plan(cfg, gain=gain, progress=progress)
    total, start = 5 * 4, progress * 4

    def expected(s: int) -> float:
        return gain * 0.2 * (1 + math.cos(math.pi * (start + gain * s) / total)) / 2

    assert _lrs(plan, 4) == pytest.approx([expected(s) for s in range(4)], rel=1e-12)


def test_adascale_gain_at_the_effective_batch_by_hand():
    # B₀ = 32, 4 micro-batches of 32: B = 128. B_simple = 16/0.5 = 32: r = 2/1.25 = 1.6.
    noise = NoiseEstimate(grad_sq=0.5, trace=16.0)
    client = {"batch_size": 32, "accumulate": 4, "lr": 0.1}
    cfg = _cfg(client=client, batch={"adascale": True}, monitor={"noise_scale": 1})
    plan = plan_client_round(cfg, RoundPlan(32, 1.0, 0.0, noise), 0, 1000, 1000.0)
    assert plan.effective_batch_size == 128
    assert plan.lr_gain == pytest.approx(1.6)
    assert plan.first_lr() == pytest.approx(0.16)
    # a client holding 96 samples steps with B = 96: r = (1 + 1)/(32/96 + 1) = 1.5
    small = plan_client_round(cfg, RoundPlan(32, 1.0, 0.0, noise), 0, 96, 1000.0)
    assert small.effective_batch_size == 96
    assert small.lr_gain == pytest.approx(1.5)
    # a client with less than B₀: no larger batch, no gain
    assert plan_client_round(cfg, RoundPlan(32, 1.0, 0.0, noise), 0, 20, 1000.0).lr_gain == 1.0


# --- regularization ------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("linear", 2.0), ("sqrt", 2**0.5)])
def test_regularization_scales_weight_decay_and_dropout(rule, factor):
    client = {
        "batch_size": 16,
        "accumulate": 4,
        "base_batch_size": 32,
        "weight_decay": 1e-4,
        "regularization": rule,
    }
    cfg = _cfg(client=client, model={"name": "mlp", "dropout": 0.1})
    plan = _plan(cfg, n=1000)
    assert plan.weight_decay == pytest.approx(1e-4 * factor, rel=1e-12)
    assert plan.dropout == pytest.approx(0.1 * factor, rel=1e-12)


def test_linear_regularization_caps_dropout_at_095():
    client = {"batch_size": 128, "base_batch_size": 32, "weight_decay": 0.01}
    cfg = _cfg(client=client | {"regularization": "linear"}, model={"dropout": 0.5})
    plan = _plan(cfg, n=1000)
    assert plan.weight_decay == pytest.approx(0.04)
    assert plan.dropout == 0.95


def test_regularization_below_the_base_batch_shrinks():
    client = {"batch_size": 8, "base_batch_size": 32, "weight_decay": 0.01}
    cfg = _cfg(client=client | {"regularization": "linear"}, model={"dropout": 0.2})
    plan = _plan(cfg, n=1000)
    assert plan.weight_decay == pytest.approx(0.0025)
    assert plan.dropout == pytest.approx(0.05)
