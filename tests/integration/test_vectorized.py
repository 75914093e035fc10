"""engine=vectorized: the in-process engine's rows, with eligible clients trained at once."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from fedbatch.config import RunConfig, build_config
from fedbatch.engine import run_engine
from fedbatch.engine.vectorized import VectorizedGrid
from fedbatch.federated.server_app import run_experiment
from fedbatch.federated.workload import workload_for
from tests.conftest import read_rows, tiny_config, tiny_raw, without_measured

Rows = list[dict[str, Any]]


def _both(cfg: RunConfig, tmp_path: Path) -> tuple[Rows, Rows, int]:
    """Rows of engine=inprocess and engine=vectorized, and the messages it batched."""
    run_engine(cfg, tmp_path / "inprocess", progress=False)
    grid = VectorizedGrid(cfg)
    run_experiment(grid, cfg, tmp_path / "vectorized", progress=False)
    rows = (read_rows(tmp_path / name) for name in ("inprocess", "vectorized"))
    inprocess, vectorized = (without_measured(r) for r in rows)
    return inprocess, vectorized, grid.batched


def _assert_same(expected: Rows, actual: Rows) -> None:
    """Integers, strings and nulls equal; floats to rel 1e-5."""
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float) and not math.isnan(value):
                # The gap is a difference of two losses: their error, not its own size.
                tolerance = 1e-6 if key == "generalization_gap" else 0.0
                assert got[key] == pytest.approx(value, rel=1e-5, abs=tolerance), key
            elif isinstance(value, float):
                assert math.isnan(got[key]), key
            else:
                assert got[key] == value and type(got[key]) is type(value), key


def _all_batched(cfg: RunConfig, tmp_path: Path) -> Rows:
    """The in-process engine's rows, after checking that engine=vectorized batched every
    train message and gave the same rows."""
    inprocess, vectorized, batched = _both(cfg, tmp_path)
    assert batched == cfg.rounds * cfg.clients_per_round
    _assert_same(inprocess, vectorized)
    return inprocess


ELIGIBLE = {
    "iid": {},
    "unequal-steps": {"partition": {"name": "quantity"}},
    "lr-schedule": {
        "client": {"batch_size": 20, "lr_schedule": "cosine", "warmup_steps": 5,
                   "lr_scaling": "sqrt"},
    },
    "momentum-decay-per-client-B": {
        "client": {"optimizer": "nesterov", "weight_decay": 0.01, "regularization": "sqrt"},
        "partition": {"name": "dirichlet", "alpha": 0.3},
        "batch": {"per_client": [8, 16, 24]},
    },
    **{f"{name}-decay": {"client": {"optimizer": name, "lr": 0.01, "weight_decay": 0.01},
                         "partition": {"name": "quantity"}}
       for name in ("adam", "adamw", "rmsprop", "adagrad")},
    # Rounds 2 and 3 start from each client's own BatchNorm layers, saved by round 1.
    "fedbn": {"model": {"norm": "batch", "fedbn": True},
              "strategy": {"name": "fedavg", "fraction_evaluate": 1.0}},
    "batchnorm-unequal-batches": {"model": {"norm": "batch"}, "partition": {"name": "quantity"},
                                  "batch": {"per_client": [8, 16, 24]}},
}  # fmt: skip


@pytest.mark.parametrize("extra", ELIGIBLE.values(), ids=ELIGIBLE.keys())
def test_batched_clients_give_the_inprocess_rows(tmp_path, extra):
    cfg = tiny_config(**extra)
    _all_batched(cfg, tmp_path)


def test_a_groupnorm_resnet_on_channels_last_weights_is_batched(tmp_path):
    # Convolution weights in channels_last (model.memory_format=auto on this CPU) used to
    # stop vmap in GroupNorm; the stacked weights are contiguous now.
    cfg = build_config(
        tiny_raw(rounds=2)
        | {
            "data": {"name": "images", "num_samples": 240},
            "model": {"name": "resnet", "channels": [4, 8], "kernel_size": 3, "norm": "group",
                      "groups": 2, "memory_format": "channels_last"},
        }
    )  # fmt: skip
    _all_batched(cfg, tmp_path)


def test_unequal_partitions_give_unequal_step_counts():
    """The premise of the `unequal-steps` case: padded, idle steps for some clients."""
    cfg = tiny_config(**ELIGIBLE["unequal-steps"])
    sizes = [len(p) for p in workload_for(cfg.to_json()).partitions]
    assert len({math.ceil(n / 16) for n in sizes}) > 1


def test_rounds_with_probes_and_client_evaluation_go_through_the_client_app(tmp_path):
    cfg = tiny_config(
        strategy={"name": "fedavg", "fraction_evaluate": 0.5}, monitor={"noise_scale": 2}
    )
    inprocess, vectorized, batched = _both(cfg, tmp_path)
    assert batched == 2 * cfg.clients_per_round  # rounds 1 and 3; round 2 probes
    assert vectorized[2]["noise_scale"] is not None
    _assert_same(inprocess, vectorized)


@pytest.mark.parametrize(
    "extra",
    [{"model": {"norm": "batch", "ghost_batch": 4}}, {"client": {"optimizer": "lars", "lr": 0.01}}],
    ids=["ghost-batchnorm", "lars"],
)
def test_ineligible_runs_are_the_inprocess_engine(tmp_path, extra):
    inprocess, vectorized, batched = _both(tiny_config(**extra), tmp_path)
    assert batched == 0
    assert vectorized == inprocess


@pytest.mark.parametrize("norm", ["none", "group", "batch"])
def test_a_cnn_is_batched_by_grouped_convolutions(tmp_path, norm):
    # Unequal partitions: padded rows and idle steps go through the grouped layers too.
    cfg = build_config(
        tiny_raw(rounds=2)
        | {
            "data": {"name": "images", "num_samples": 240},
            "partition": {"name": "quantity"},
            "model": {"name": "cnn", "channels": [4, 8], "kernel_size": 3, "norm": norm,
                      "groups": 2, "memory_format": "channels_last"},
        }
    )  # fmt: skip
    _all_batched(cfg, tmp_path)


DEVICE = {
    "name": "box", "step_overhead": 0.01, "throughput": 1000.0, "saturation": 32,
    "memory_base": 10.0, "memory_per_sample": 0.5, "memory_cap": 100.0, "power": 5.0,
    "bandwidth_down": 8.0, "bandwidth_up": 4.0, "latency": 0.1,
}  # fmt: skip


def test_the_virtual_clocks_step_limits_are_batched(tmp_path):
    # Slow devices: 0.01 + 16/100 s a step at B=16; a 1.5 s deadline cuts their round short.
    slow = DEVICE | {"name": "slow", "throughput": 100.0, "share": 0.5}
    fast = DEVICE | {"name": "fast", "share": 0.5}
    clock = {"name": "devices", "devices": [slow, fast], "deadline": 1.5,
             "policy": "deadline_partial"}  # fmt: skip
    cfg = tiny_config(clock=clock)
    inprocess = _all_batched(cfg, tmp_path)
    # Without the deadline each of the 3 clients takes 15 steps; slow ones now take fewer.
    assert all(row["steps"] < 3 * 15 for row in inprocess[1:])


def test_clients_whose_device_splits_b_go_through_the_client_app(tmp_path):
    # memory_cap 15: at most (15 − 10)/0.5 = 10 samples a pass, so B=16 is two micro-batches.
    small = DEVICE | {"name": "small", "memory_cap": 15.0, "share": 0.5}
    big = DEVICE | {"name": "big", "share": 0.5}
    cfg = tiny_config(clock={"name": "devices", "devices": [small, big], "on_oom": "accumulate"})
    inprocess, vectorized, batched = _both(cfg, tmp_path)
    assert 0 < batched < cfg.rounds * cfg.clients_per_round
    _assert_same(inprocess, vectorized)


ONLINE = {"name": "poisson", "rate": 3.0, "round_seconds": 10.0, "passes": 1}
STREAMS = {
    # Every arrival once, in batches of what is there (last ones short): prequential rows.
    "online-available": {"stream": ONLINE | {"batching": "available"}},
    # Epochs over a window buffer; momentum and per-client B over unequal batch counts.
    "window-epochs": {
        "stream": {"name": "constant", "rate": 2.0, "buffer": "window", "capacity": 25},
        "client": {"optimizer": "momentum"},
        "batch": {"per_client": [4, 8, 12]},
    },
    # Half of each online batch replayed from a reservoir; labels permuted from t = 15 s.
    "replay-concept-drift": {
        "stream": ONLINE | {"buffer": "reservoir", "capacity": 40, "replay_ratio": 0.5,
                            "drift": "concept", "drift_at": 15.0},
        "client": {"batch_size": 8},
    },
    # Inputs shifted over a 10 s ramp, some clients later than others; Adam.
    "gradual-covariate-drift": {
        "stream": {"name": "poisson", "rate": 4.0, "drift": "covariate", "drift_at": 5.0,
                   "drift_mode": "gradual", "drift_window": 10.0},
        "client": {"optimizer": "adam", "lr": 0.01},
    },
    # Each client's own BatchNorm layers (FedBN) over a window buffer's epochs.
    "fedbn-window": {
        "stream": {"name": "constant", "rate": 2.0, "buffer": "window", "capacity": 32},
        "model": {"norm": "batch", "fedbn": True},
        "strategy": {"name": "fedavg", "fraction_evaluate": 1.0},
    },
}  # fmt: skip


@pytest.mark.parametrize("extra", STREAMS.values(), ids=STREAMS.keys())
def test_streaming_clients_are_batched_with_the_inprocess_rows(tmp_path, extra):
    cfg = tiny_config(**extra)
    inprocess = _all_batched(cfg, tmp_path)
    assert all(row["samples_trained"] > 0 for row in inprocess[1:])
    if cfg.stream.passes == 1:
        assert all(0 <= row["prequential_accuracy"] <= 1 for row in inprocess[1:])


def test_stream_clients_without_a_step_go_through_the_client_app(tmp_path):
    # Waiting for B = 64 new samples at 3 a second: no step in round 1 (29 arrived), and
    # the stream state of a client answered by the ClientApp moves on once.
    cfg = tiny_config(stream=ONLINE | {"name": "constant"}, client={"batch_size": 64})
    inprocess, vectorized, batched = _both(cfg, tmp_path)
    assert inprocess[1]["steps"] == 0 and inprocess[3]["steps"] > 0
    assert 0 < batched < cfg.rounds * cfg.clients_per_round
    _assert_same(inprocess, vectorized)


def test_streams_under_the_virtual_clocks_deadline_are_batched(tmp_path):
    slow = DEVICE | {"name": "slow", "throughput": 100.0, "share": 0.5}
    fast = DEVICE | {"name": "fast", "share": 0.5}
    clock = {"name": "devices", "devices": [slow, fast], "deadline": 1.5,
             "policy": "deadline_partial"}  # fmt: skip
    cfg = tiny_config(clock=clock, stream={"name": "poisson", "rate": 20.0})
    _all_batched(cfg, tmp_path)


def test_a_failed_batched_round_leaves_the_streams_to_the_client_app(tmp_path, monkeypatch):
    # Batched training plans each stream's round before it fails: the ClientApp, which
    # then answers, must find every stream where the round began.
    def fail(*args, **kwargs):
        raise RuntimeError("batched training broke")

    monkeypatch.setattr("fedbatch.engine.vectorized.train_clients", fail)
    cfg = tiny_config(stream=STREAMS["online-available"]["stream"])
    inprocess, vectorized, batched = _both(cfg, tmp_path)
    assert batched == 0
    assert vectorized == inprocess


def test_a_failure_while_replies_are_built_leaves_every_context_as_it_was(tmp_path, monkeypatch):
    # The second reply's weights fail after the first client's were made: neither its
    # stream state nor its FedBN layers may have moved on when the ClientApp answers.
    from fedbatch.engine import vectorized

    calls = []

    def second_fails(state):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("reply broke")
        return vectorized_state_to_arrays(state)

    vectorized_state_to_arrays = vectorized.state_to_arrays
    monkeypatch.setattr(vectorized, "state_to_arrays", second_fails)
    cfg = tiny_config(**STREAMS["fedbn-window"])
    inprocess, vectorized_rows, batched = _both(cfg, tmp_path)
    assert len(calls) >= 2
    assert batched == (cfg.rounds - 1) * cfg.clients_per_round  # round 1 fell back
    _assert_same(inprocess, vectorized_rows)


def test_a_one_row_step_under_batchnorm_is_the_client_apps_to_answer(tmp_path):
    # Online steps of 6 of what arrived: a client whose round ends in a one-row step
    # fails it in the ClientApp, as BatchNorm over features cannot train on one sample;
    # the other clients of its round are still batched. (With B=4, steps of 2 rows make
    # BatchNorm's variance so ill-conditioned that the two engines' gradient norms part
    # at rel 5e-5, past this file's 1e-5.)
    cfg = tiny_config(
        stream=ONLINE | {"batching": "available"}, model={"norm": "batch"}, client={"batch_size": 6}
    )
    inprocess, vectorized, batched = _both(cfg, tmp_path)
    failed = sum(row["clients_failed"] for row in inprocess[1:])
    assert 0 < failed < cfg.rounds * cfg.clients_per_round
    assert batched == cfg.rounds * cfg.clients_per_round - failed
    _assert_same(inprocess, vectorized)
