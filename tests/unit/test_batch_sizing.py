"""Batch-size schedules over rounds and across clients, checked on exact numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedbatch.config import FULL_BATCH
from fedbatch.config.schema import validate
from fedbatch.config.training import BatchConfig, check_batch
from fedbatch.local.batch_sizing import (
    BatchChoice,
    BatchPlanner,
    DeviceLimit,
    NoiseEstimate,
    adaptive_batch_size,
    choose_client_batch,
    scheduled_batch_size,
)


def _batch(**raw: Any):
    batch = validate(BatchConfig, raw, "batch")
    check_batch(batch)
    return batch


def _sizes(planner: BatchPlanner, rounds: int, noise: NoiseEstimate | None = None) -> list:
    return [planner.plan(r, noise).batch_size for r in range(1, rounds + 1)]


# --- deterministic schedules ---------------------------------------------------------------


def test_constant_schedule_keeps_the_base_batch():
    planner = BatchPlanner(_batch(name="constant"), 8, rounds=4)
    assert _sizes(planner, 4) == [8, 8, 8, 8]


def test_step_schedule_multiplies_at_each_milestone():
    cfg = _batch(name="step", milestones=[5, 3], factor=2)
    assert cfg.milestones == (3, 5)
    assert [scheduled_batch_size(cfg, 8, r, 6) for r in range(1, 7)] == [8, 8, 16, 16, 32, 32]
    assert _sizes(BatchPlanner(cfg, 8, rounds=6), 6) == [8, 8, 16, 16, 32, 32]


def test_step_schedule_with_a_fractional_factor_rounds():
    cfg = _batch(name="step", milestones=[2, 3], factor=1.5)
    assert [scheduled_batch_size(cfg, 10, r, 3) for r in (1, 2, 3)] == [10, 15, 22]


def test_step_schedule_is_capped_by_batch_max():
    cfg = _batch(name="step", milestones=[3, 5], factor=2, max=20)
    assert _sizes(BatchPlanner(cfg, 8, rounds=6), 6) == [8, 8, 16, 16, 20, 20]


def test_step_schedule_is_lifted_to_batch_min():
    cfg = _batch(name="step", milestones=[3, 5], factor=2, min=10)
    assert _sizes(BatchPlanner(cfg, 8, rounds=6), 6) == [10, 10, 16, 16, 32, 32]


def test_linear_ramp_exact_values():
    cfg = _batch(name="ramp", ramp="linear", max=64)
    assert [scheduled_batch_size(cfg, 4, r, 5) for r in range(1, 6)] == [4, 19, 34, 49, 64]
    assert _sizes(BatchPlanner(cfg, 4, rounds=5), 5) == [4, 19, 34, 49, 64]


def test_geometric_ramp_exact_values():
    cfg = _batch(name="ramp", ramp="geometric", max=64)
    assert _sizes(BatchPlanner(cfg, 4, rounds=5), 5) == [4, 8, 16, 32, 64]


def test_ramp_rounds_ends_the_ramp_early_and_then_holds():
    cfg = _batch(name="ramp", ramp="linear", max=64, ramp_rounds=3)
    assert _sizes(BatchPlanner(cfg, 4, rounds=6), 6) == [4, 34, 64, 64, 64, 64]
    geometric = _batch(name="ramp", ramp="geometric", max=64, ramp_rounds=3)
    assert _sizes(BatchPlanner(geometric, 4, rounds=5), 5) == [4, 16, 64, 64, 64]


def test_one_round_ramp_is_at_its_end():
    cfg = _batch(name="ramp", max=64)
    assert scheduled_batch_size(cfg, 4, 1, 1) == 64


# --- adaptive ------------------------------------------------------------------------------


def test_adaptive_simple_grows_toward_b_simple_by_at_most_growth():
    cfg = _batch(name="adaptive", rule="simple", growth=2)
    noise = NoiseEstimate(grad_sq=2.0, trace=200.0)  # B_simple = 100
    assert noise.b_simple == pytest.approx(100.0)
    planner = BatchPlanner(cfg, 8, rounds=6)
    assert _sizes(planner, 6, noise) == [16, 32, 64, 100, 100, 100]


def test_adaptive_rounds_a_fractional_target_up():
    cfg = _batch(name="adaptive", rule="simple", growth=4)
    noise = NoiseEstimate(grad_sq=2.0, trace=101.0)  # B_simple = 50.5
    assert adaptive_batch_size(cfg, 16, noise) == 51


def test_adaptive_growth_rounds_a_fractional_factor_up():
    cfg = _batch(name="adaptive", rule="simple", growth=1.5)
    noise = NoiseEstimate(grad_sq=1.0, trace=1000.0)
    assert adaptive_batch_size(cfg, 7, noise) == 11  # ceil(10.5)
    assert adaptive_batch_size(cfg, 1, noise) == 2  # B=1 still grows with growth < 2


def test_adaptive_never_shrinks():
    cfg = _batch(name="adaptive", rule="simple", growth=2)
    planner = BatchPlanner(cfg, 32, rounds=4)
    small = NoiseEstimate(grad_sq=1.0, trace=5.0)  # B_simple = 5 < 32
    big = NoiseEstimate(grad_sq=1.0, trace=48.0)
    assert planner.plan(1, small).batch_size == 32
    assert planner.plan(2, big).batch_size == 48
    assert planner.plan(3, small).batch_size == 48
    assert planner.plan(4, None).batch_size == 48


def test_adaptive_norm_test_targets_b_simple_over_theta_squared():
    cfg = _batch(name="adaptive", rule="norm_test", theta=0.5, growth=2)
    noise = NoiseEstimate(grad_sq=1.0, trace=10.0)  # B_simple 10, target 10 / 0.25 = 40
    assert _sizes(BatchPlanner(cfg, 8, rounds=4), 4, noise) == [16, 32, 40, 40]
    simple = _batch(name="adaptive", rule="simple", growth=2)
    assert _sizes(BatchPlanner(simple, 8, rounds=3), 3, noise) == [10, 10, 10]


def test_adaptive_is_bounded_by_batch_max():
    cfg = _batch(name="adaptive", growth=2, max=24)
    noise = NoiseEstimate(grad_sq=1.0, trace=1000.0)
    assert _sizes(BatchPlanner(cfg, 8, rounds=3), 3, noise) == [16, 24, 24]


@pytest.mark.parametrize(
    "noise",
    [None, NoiseEstimate(0.0, 10.0), NoiseEstimate(-1.0, 10.0), NoiseEstimate(1.0, math.nan)],
)
def test_without_a_usable_estimate_b_is_unchanged(noise):
    cfg = _batch(name="adaptive", growth=2)
    assert adaptive_batch_size(cfg, 12, noise) == 12
    assert _sizes(BatchPlanner(cfg, 12, rounds=3), 3, noise) == [12, 12, 12]


def test_b_simple_clamps_a_negative_trace_at_zero():
    assert NoiseEstimate(grad_sq=2.0, trace=-4.0).b_simple == 0.0
    assert math.isnan(NoiseEstimate(grad_sq=0.0, trace=4.0).b_simple)


def test_full_batch_base_plans_full_and_counts_rounds():
    planner = BatchPlanner(_batch(name="step", milestones=[2]), FULL_BATCH, rounds=3)
    plans = []
    for server_round in (1, 2, 3):
        plans.append(planner.plan(server_round, NoiseEstimate(1.0, 10.0)))
        planner.advance()
    assert [p.batch_size for p in plans] == [FULL_BATCH] * 3
    assert [p.lr_gain for p in plans] == [1.0, 1.0, 1.0]
    assert [p.progress for p in plans] == [0.0, 1.0, 2.0]


# --- AdaScale ------------------------------------------------------------------------------


def test_adascale_plans_carry_the_noise_and_progress_moves_by_the_reported_gain():
    cfg = _batch(name="step", milestones=[2, 3], factor=2, adascale=True)
    planner = BatchPlanner(cfg, 8, rounds=4)
    noise = NoiseEstimate(grad_sq=1.0, trace=3.0)
    plans = []
    for server_round, reported in zip((1, 2, 3, 4), (1.0, 1.2, 1.5, 1.5), strict=True):
        plans.append(planner.plan(server_round, gain_noise=noise))
        planner.advance(reported)  # the clients' mean gain after the round
    assert [p.batch_size for p in plans] == [8, 16, 32, 32]
    assert all(p.gain_noise == noise and p.lr_gain == 1.0 for p in plans)
    assert [p.progress for p in plans] == pytest.approx([0.0, 1.0, 2.2, 3.7])
    assert planner.progress == pytest.approx(5.2)


def test_adascale_without_an_estimate_plans_no_gain():
    cfg = _batch(name="step", milestones=[1], factor=4, adascale=True)
    planner = BatchPlanner(cfg, 8, rounds=2)
    plans = []
    for server_round in (1, 2):
        plans.append(planner.plan(server_round, None))
        planner.advance()
    assert [p.batch_size for p in plans] == [32, 32]
    assert [p.gain_noise for p in plans] == [None, None]
    assert [p.progress for p in plans] == [0.0, 1.0]


def test_without_adascale_the_noise_stays_on_the_server():
    cfg = _batch(name="step", milestones=[1], factor=4)
    plan = BatchPlanner(cfg, 8, rounds=1).plan(1, gain_noise=NoiseEstimate(1.0, 3.0))
    assert plan.gain_noise is None and plan.lr_gain == 1.0 and plan.progress == 0.0


# --- per client ------------------------------------------------------------------------------


def client_batch_size(*args: object) -> int:
    return choose_client_batch(*args).size  # type: ignore[arg-type]


def test_per_client_list_is_cycled_and_scaled_by_the_schedule():
    cfg = _batch(per_client=[8, 16, 32])
    sizes = [client_batch_size(cfg, 64, 32, pid, 1000, 1000.0) for pid in range(5)]
    assert sizes == [16, 32, 64, 16, 32]
    unscaled = [client_batch_size(cfg, 32, 32, pid, 1000, 1000.0) for pid in range(3)]
    assert unscaled == [8, 16, 32]


def test_per_client_list_is_capped_at_the_clients_data():
    cfg = _batch(per_client=[8, 16, 32])
    assert client_batch_size(cfg, 64, 32, 2, 50, 100.0) == 50


def test_equal_steps_makes_b_proportional_to_data_size():
    cfg = _batch(per_client="equal_steps")
    mean = 80.0
    sizes = {n: client_batch_size(cfg, 32, 32, 0, n, mean) for n in (40, 80, 120, 200)}
    assert sizes == {40: 16, 80: 32, 120: 48, 200: 80}
    # so every client makes the same number of steps per epoch
    assert {math.ceil(n / b) for n, b in sizes.items()} == {3}


def test_same_rule_uses_the_round_batch_capped_at_the_data():
    cfg = _batch()
    assert client_batch_size(cfg, 48, 32, 3, 100, 50.0) == 48
    assert client_batch_size(cfg, 48, 32, 3, 30, 50.0) == 30


def test_client_batch_respects_batch_bounds():
    cfg = _batch(per_client=[2, 200], min=4, max=100)
    assert client_batch_size(cfg, 32, 32, 0, 1000, 1000.0) == 4
    assert client_batch_size(cfg, 32, 32, 1, 1000, 1000.0) == 100


def test_full_round_batch_means_all_the_clients_data():
    cfg = _batch(per_client=[8, 16])
    assert client_batch_size(cfg, FULL_BATCH, FULL_BATCH, 1, 77, 100.0) == 77


def test_one_place_decides_a_clients_batch_and_says_why():
    cfg = _batch(per_client=[64, 8], max=128)
    memory = DeviceLimit("memory", 16)
    # schedule 32 → per-client 64 (list entry 64 at base 32) → the device's cap 16
    assert choose_client_batch(cfg, 32, 32, 0, 1000, 1000.0, device=memory) == BatchChoice(
        16, "device_memory"
    )
    # per-client 8 fits the device: the per-client rule had the last word
    assert choose_client_batch(cfg, 32, 32, 1, 1000, 1000.0, device=memory) == BatchChoice(
        8, "per_client"
    )
    # a faster device (1.5× the mean) scales B after the per-client rule: 8 → 12
    fast = DeviceLimit("throughput", 1.5)
    assert choose_client_batch(cfg, 32, 32, 1, 1000, 1000.0, device=fast) == BatchChoice(
        12, "device_throughput"
    )
    # a client with 10 samples cannot take more
    assert choose_client_batch(cfg, 32, 32, 0, 10, 1000.0, device=memory) == BatchChoice(10, "data")
    assert choose_client_batch(_batch(), 32, 32, 0, 1000, 1000.0) == BatchChoice(32, "schedule")
    assert choose_client_batch(_batch(max=16), 32, 32, 0, 1000, 1000.0).reason == "bounds"
