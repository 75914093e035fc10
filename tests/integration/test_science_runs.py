"""Batch-size science end to end on the in-process engine: schedules, probes, FedBN."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from flwr.clientapp import ClientApp

from fedbatch.config import ConfigError, build_config
from fedbatch.engine import inprocess
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated import client_app
from fedbatch.federated.records import array_to_tensor
from fedbatch.federated.server_app import run_experiment
from fedbatch.local.models import norm_state_keys
from tests.conftest import read_rows, tiny_config, tiny_raw

NOISE_KEYS = ("noise_grad_sq", "noise_trace", "noise_scale", "noise_scale_across")
NOISE_KEYS += ("noise_scale_local", "noise_scale_global")


def _small(**overrides: Any) -> dict[str, Any]:
    """4 clients, 2 per round: iid digits partitions of 359 or 360 samples."""
    return {"num_clients": 4, "clients_per_round": 2, "device": "cpu"} | overrides


def _run(tmp_path, **overrides: Any) -> list[dict[str, Any]]:
    cfg = tiny_config(**_small(**overrides))
    inprocess.run(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    assert [r["round"] for r in rows] == list(range(cfg.rounds + 1))
    return rows


# --- batch-size schedule -------------------------------------------------------------------


def test_step_schedule_sets_each_rounds_batch_and_effective_batch(tmp_path):
    rows = _run(
        tmp_path,
        client={"batch_size": 8, "accumulate": 2, "base_batch_size": 16, "lr_scaling": "linear"},
        batch={"name": "step", "milestones": [2, 3], "factor": 2},
    )
    trained = rows[1:]
    assert [r["batch_size"] for r in trained] == [8, 16, 32]
    assert [r["effective_batch_size"] for r in trained] == [16, 32, 64]
    assert [r["lr"] for r in trained] == pytest.approx([0.1, 0.2, 0.4])
    for row in trained:
        eff = row["effective_batch_size"]
        # two clients of 359 or 360 samples (the same ceil for these B), one epoch each
        assert row["steps"] == 2 * math.ceil(360 / eff) == 2 * math.ceil(359 / eff)
        assert row["examples_seen"] == row["examples"]
    assert rows[0]["batch_size"] is None


# --- probes --------------------------------------------------------------------------------


def test_monitors_off_by_default_leave_noise_null_and_fill_grad_norms(tmp_path):
    rows = _run(tmp_path, rounds=2)
    for row in rows:
        assert "grad_norm_mean" in row and "grad_norm_max" in row
        for key in (*NOISE_KEYS, "update_cosine_mean", "update_norm_mean", "weight_norm"):
            assert row[key] is None, key
    for row in rows[1:]:
        assert row["grad_norm_max"] >= row["grad_norm_mean"] > 0
        assert row["lr_gain"] == 1.0


def test_grad_norm_zero_leaves_grad_norms_null(tmp_path):
    rows = _run(tmp_path, rounds=2, monitor={"grad_norm": 0})
    for row in rows[1:]:
        assert row["grad_norm_mean"] is None and row["grad_norm_max"] is None
        assert row["train_loss"] > 0  # it trained


def _noise_run(tmp_path, rounds: int, monitor: dict[str, Any]) -> list[dict[str, Any]]:
    # Every client, B=64: enough samples that one round's |G|² estimate across the
    # clients is positive (with 2 clients of B=16 it comes out negative: nan, null).
    return _run(
        tmp_path,
        rounds=rounds,
        clients_per_round=4,
        client={"batch_size": 64},
        monitor=monitor,
    )


def test_noise_probes_and_update_stats_fill_every_round(tmp_path):
    rows = _noise_run(tmp_path, 3, {"noise_scale": 1, "noise_across": 1, "updates": 1})
    for row in rows[1:]:
        for key in NOISE_KEYS:
            assert isinstance(row[key], float) and math.isfinite(row[key]), key
        assert row["noise_trace"] > 0
        assert row["noise_scale"] > 0
        assert -1.0 <= row["update_cosine_min"] <= row["update_cosine_mean"] <= 1.0
        assert row["update_norm_mean"] > 0
        assert row["weight_norm"] > 0
    # each round's update starts from the last round's weights: their norm changes
    assert rows[1]["weight_norm"] != rows[2]["weight_norm"]
    # noise_scale is the ratio of the bias-corrected EMAs (decay 0.9) of the client means
    g1, t1 = rows[1]["noise_grad_sq"], rows[1]["noise_trace"]
    g2, t2 = rows[2]["noise_grad_sq"], rows[2]["noise_trace"]
    assert rows[1]["noise_scale_local"] == pytest.approx(t1 / g1, rel=1e-9)
    assert rows[2]["noise_scale_local"] == pytest.approx(
        (0.09 * t1 + 0.1 * t2) / (0.09 * g1 + 0.1 * g2), rel=1e-9
    )
    assert [r["noise_scale"] for r in rows] == [r["noise_scale_local"] for r in rows]  # alias
    # effective draws (Σw)²/Σw² of the bias-corrected EMA: 1, then 0.19²/(0.09² + 0.1²)
    assert rows[1]["noise_scale_local_draws"] == pytest.approx(1.0)
    assert rows[2]["noise_scale_local_draws"] == pytest.approx(0.19**2 / (0.09**2 + 0.1**2))
    assert rows[1]["noise_scale_local_se"] is None  # one draw: no spread to measure
    assert rows[3]["noise_scale_local_se"] > 0


def test_noise_across_alone_fills_the_global_noise_scale_only(tmp_path):
    rows = _noise_run(tmp_path, 2, {"noise_across": 1})
    for row in rows[1:]:
        assert row["noise_grad_sq"] is None and row["noise_trace"] is None
        assert row["noise_scale_local"] is None and row["noise_scale"] is None
        assert math.isfinite(row["noise_scale_across"]) and row["noise_scale_across"] > 0
        assert row["noise_scale_global"] > 0
    # one estimate so far: the running global noise scale is the probe's own
    assert rows[1]["noise_scale_global"] == pytest.approx(rows[1]["noise_scale_across"])


def test_updates_every_second_round(tmp_path):
    rows = _run(tmp_path, monitor={"updates": 2})
    assert [r["update_norm_mean"] is not None for r in rows[1:]] == [False, True, False]


# --- adaptive batch size -------------------------------------------------------------------


def test_adaptive_batch_never_decreases_and_stays_in_bounds(tmp_path):
    rows = _run(
        tmp_path,
        rounds=4,
        client={"batch_size": 8},
        batch={"name": "adaptive", "min": 8, "max": 48, "growth": 2, "noise": "local"},
        monitor={"noise_scale": 1},
    )
    sizes = [r["batch_size"] for r in rows[1:]]
    assert sizes[0] == 8  # no estimate before the first round
    assert all(8 <= b <= 48 for b in sizes)
    assert sizes == sorted(sizes)
    for previous, current in itertools.pairwise(sizes):
        assert current <= 2 * previous  # growth 2
    # exactly the rule, fed the running estimate that each row reports
    for row, following in itertools.pairwise(rows[1:]):
        b_simple, previous = row["noise_scale"], row["batch_size"]
        grown = max(previous, min(math.ceil(b_simple), math.floor(2 * previous)))
        assert following["batch_size"] == min(max(grown, 8), 48)
    assert sizes[-1] > sizes[0]  # digits at init: B_simple ≈ 50-150, so B grew


# --- FedBN ---------------------------------------------------------------------------------


def test_fedbn_clients_keep_their_own_batchnorm_layers(tmp_path, monkeypatch):
    cfg = tiny_config(
        **_small(clients_per_round=4, rounds=2),
        model={"name": "mlp", "hidden": [16], "norm": "batch", "fedbn": True},
    )
    starts: list[tuple[int, int, dict[str, torch.Tensor]]] = []
    received: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    saved: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    current: dict[str, int] = {}
    real_train_local = client_app.train_local

    def spy(model, *args, **kwargs):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        starts.append((current["round"], current["pid"], state))
        return real_train_local(model, *args, **kwargs)

    monkeypatch.setattr(client_app, "train_local", spy)
    recorder = ClientApp()

    @recorder.train()
    def _train(msg, context):
        config = msg.content["config"]
        key = (int(config["server-round"]), int(config["partition-id"]))
        current.update(round=key[0], pid=key[1])
        received[key] = {k: array_to_tensor(a).clone() for k, a in msg.content["arrays"].items()}
        reply = client_app.app(msg, context)
        record = context.state[client_app.LOCAL_NORMS]
        saved[key] = {k: array_to_tensor(a).clone() for k, a in record.items()}
        return reply

    grid = InProcessGrid(cfg.num_clients, recorder)
    run_experiment(grid, cfg, tmp_path, progress=False)
    assert sorted(received) == [(r, p) for r in (1, 2) for p in range(4)]

    norm_keys = norm_state_keys(client_app.workload_for(cfg.to_json()).model())
    assert set(norm_keys) == {
        f"1.1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert all(set(s) == set(norm_keys) for s in saved.values())
    by_key = {(r, p): state for r, p, state in starts}
    for pid in range(4):
        first, second = by_key[(1, pid)], by_key[(2, pid)]
        global_two = received[(2, pid)]
        for key in norm_keys:
            # round 1 starts from the initial global weights (nothing saved yet) ...
            if key in received[(1, pid)]:
                assert torch.equal(first[key], received[(1, pid)][key]), key
            # ... round 2 from this client's own values at the end of round 1
            assert torch.equal(second[key], saved[(1, pid)][key]), key
        for key in ("1.1.weight", "1.1.running_mean"):
            assert not torch.equal(second[key], global_two[key]), key
        # everything else comes from the aggregated global model
        for key, value in global_two.items():
            if key not in norm_keys:
                assert torch.equal(second[key], value), key
    # the clients' own layers differ from each other (different data)
    assert not torch.equal(saved[(1, 0)]["1.1.running_mean"], saved[(1, 1)]["1.1.running_mean"])


def test_fedbn_off_clients_start_from_the_global_batchnorm(tmp_path, monkeypatch):
    cfg = tiny_config(
        **_small(clients_per_round=4, rounds=2),
        model={"name": "mlp", "hidden": [16], "norm": "batch"},
    )
    starts: list[dict[str, torch.Tensor]] = []
    real_train_local = client_app.train_local

    def spy(model, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_train_local(model, *args, **kwargs)

    monkeypatch.setattr(client_app, "train_local", spy)
    grid = InProcessGrid(cfg.num_clients)
    run_experiment(grid, cfg, tmp_path, progress=False)
    second = starts[4:]
    assert len(second) == 4
    for state in second[1:]:  # every client of round 2 starts from the same global BN
        assert torch.equal(state["1.1.weight"], second[0]["1.1.weight"])
        assert torch.equal(state["1.1.running_mean"], second[0]["1.1.running_mean"])
    assert all(not grid.contexts[n].state for n in grid.contexts)  # nothing kept locally


# --- config errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"batch": {"name": "adaptive"}}, "monitor.noise_across"),
        ({"batch": {"name": "adaptive"}, "monitor": {"noise_scale": 1}}, "monitor.noise_across"),
        ({"batch": {"name": "adaptive", "noise": "local"}}, "monitor.noise_scale"),
        ({"batch": {"name": "step", "adascale": True}}, "monitor.noise_scale"),
        ({"batch": {"adascale": True}, "monitor": {"noise_across": 1}}, "monitor.noise_scale"),
        ({"batch": {"noise": "pooled"}}, "batch.noise"),
        ({"monitor": {"noise_average": "median"}}, "monitor.noise_average"),
        ({"client": {"precision": "fp16"}, "device": "cpu"}, "client.precision"),
        ({"batch": {"name": "ramp", "max": "full"}}, "batch.max"),
        ({"batch": {"name": "ramp"}}, "batch.max"),  # max defaults to full
        # B starts at client.batch_size=16: bounds that exclude it would change it unasked
        ({"batch": {"name": "ramp", "max": 4}}, "batch.max"),
        ({"batch": {"min": 32}}, "batch.min"),
    ],
)
def test_bad_science_combinations_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        build_config(tiny_raw(**overrides))
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}=")


@pytest.mark.parametrize(
    "overrides",
    [
        {"batch": {"name": "adaptive", "noise": "local"}, "monitor": {"noise_scale": 1}},
        {"batch": {"name": "adaptive"}, "monitor": {"noise_across": 2}},
        {"batch": {"adascale": True}, "monitor": {"noise_scale": 1}},
        {"client": {"precision": "bf16"}, "device": "cpu"},
        {"batch": {"name": "ramp", "max": 64}},
    ],
)
def test_the_same_settings_are_accepted_when_complete(overrides):
    build_config(tiny_raw(**overrides))


def test_adascale_gain_is_taken_at_the_batch_clients_step_with(tmp_path):
    """B₀ = 16 with 32 micro-batches asks for B = 512, but each client holds 359 or 360
    samples: the gain is AdaScale's at that capped batch, from the last round's local
    B_simple, r = (B_simple/B₀ + 1)/(B_simple/B + 1)."""
    rows = _run(
        tmp_path,
        rounds=3,
        client={"batch_size": 16, "accumulate": 32},
        batch={"adascale": True},
        monitor={"noise_scale": 1},
    )
    assert rows[1]["lr_gain"] == 1.0  # no estimate before the first round
    for previous, row in itertools.pairwise(rows[1:]):
        b_simple, batch = previous["noise_scale_local"], row["effective_batch_size"]
        assert 359 <= batch <= 360
        expected = (b_simple / 16 + 1) / (b_simple / batch + 1)
        assert row["lr_gain"] == pytest.approx(expected, rel=1e-3)
        assert row["lr"] == pytest.approx(0.1 * row["lr_gain"], rel=1e-3)
