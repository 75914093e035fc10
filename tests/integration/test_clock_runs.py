"""The virtual clock in the round loop: exact times, deadlines, over-selection, memory."""

from __future__ import annotations

import json
import math
import time

import pytest

from fedbatch.clock.devices import DeviceClass, fit_device
from fedbatch.config import ConfigError, build_config
from fedbatch.engine import inprocess
from fedbatch.federated.records import model_to_arrays
from fedbatch.federated.strategies import check_strategy_params
from fedbatch.federated.virtual_time import RoundClock, record_bytes
from fedbatch.federated.workload import workload_for
from fedbatch.local.batch_sizing import DeviceLimit, choose_client_batch
from tests.conftest import read_rows, tiny_config, without_measured

# One device class, round numbers: t(B=16) = 0.01 + 32 / 1000 = 0.042 s per step.
DEVICE = {
    "name": "box", "step_overhead": 0.01, "throughput": 1000.0, "saturation": 32,
    "memory_base": 10.0, "memory_per_sample": 0.5, "memory_cap": 100.0, "power": 5.0,
    "bandwidth_down": 8.0, "bandwidth_up": 4.0, "latency": 0.1,
}  # fmt: skip


def _clock(**extra):
    return {"name": "devices", "devices": [DEVICE]} | extra


def _run(tmp_path, **overrides):
    cfg = tiny_config(**overrides)
    summary = inprocess.run(cfg, tmp_path, progress=False)
    return cfg, read_rows(tmp_path)[1:], summary


def test_round_time_is_download_plus_steps_plus_upload(tmp_path):
    cfg, rows, summary = _run(tmp_path, rounds=2, clock=_clock())
    model_bytes = record_bytes(model_to_arrays(workload_for(cfg.to_json()).initial_model()))
    download = 0.1 + 8 * model_bytes / 8e6
    upload = 0.1 + 8 * model_bytes / 4e6
    # IID digits over 6 clients: 239 or 240 samples, one epoch of B=16: 15 steps each.
    expected = download + 15 * 0.042 + upload
    for row in rows:
        assert row["round_virtual_seconds"] == pytest.approx(expected, rel=1e-12)
        assert row["energy_joules"] == pytest.approx(3 * 5.0 * 15 * 0.042, rel=1e-12)
        assert row["clients_dropped"] == 0
    assert rows[-1]["virtual_seconds"] == pytest.approx(2 * expected, rel=1e-12)
    assert summary["virtual_seconds"] == pytest.approx(2 * expected, rel=1e-12)


def test_deadline_drops_the_stragglers_and_partial_work_fits_them_in(tmp_path):
    slow = DEVICE | {"name": "slow", "throughput": 100.0, "share": 0.5}
    fast = DEVICE | {"name": "fast", "share": 0.5}
    clock = {"name": "devices", "devices": [slow, fast], "deadline": 1.5}
    shape = {"rounds": 2, "clients_per_round": 6}
    _, dropped, _ = _run(tmp_path / "drop", **shape, clock=clock | {"policy": "deadline_drop"})
    _, partial, _ = _run(
        tmp_path / "partial", **shape, clock=clock | {"policy": "deadline_partial"}
    )
    # Slow devices: 0.01 + 32/100 = 0.33 s per step, 15 steps: far past 1.5 s.
    for row in dropped:
        assert row["clients_dropped"] == 3 and row["steps"] == 3 * 15
        assert row["round_virtual_seconds"] == 1.5
    for row in partial:  # slow clients do the steps that fit, and make the deadline
        assert row["clients_dropped"] == 0
        assert 3 * 15 < row["steps"] < 6 * 15
        assert row["round_virtual_seconds"] <= 1.5


def test_over_selection_aggregates_the_first_k(tmp_path):
    _, rows, _ = _run(tmp_path, rounds=2, clients_per_round=3, clock=_clock(over_selection=1.0))
    for row in rows:
        assert row["clients_sampled"] == 6 and row["clients_dropped"] == 3
        assert row["steps"] == 3 * 15  # only the three kept updates are aggregated


def test_a_batch_over_device_memory_fails_or_accumulates_to_the_same_update(tmp_path):
    tight = DEVICE | {"memory_cap": 14.0}  # 10 + 0.5·B ≤ 14: B ≤ 8
    _, plain, _ = _run(tmp_path / "plain", rounds=2)
    _, failed, _ = _run(tmp_path / "fail", rounds=2, clock={"name": "devices", "devices": [tight]})
    _, split, _ = _run(
        tmp_path / "split",
        rounds=2,
        clock={"name": "devices", "devices": [tight], "on_oom": "accumulate"},
    )
    assert all(r["clients_failed"] == 3 for r in failed)
    assert "device memory" in failed[0]["client_error"]
    # Micro-batches of 8 accumulated into steps of 16: the same SGD update.
    for a, b in zip(plain, split, strict=True):
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-9)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("clock", "key"),
    [
        (_clock(policy="deadline_drop"), "clock.deadline"),
        (_clock(policy="deadline_drop", deadline=0), "clock.deadline"),
        ({"name": "devices", "devices": [DEVICE | {"bandwidth_up": -1.0}]},
         "clock.devices[0].bandwidth_up"),
        ({"name": "devices", "devices": [DEVICE | {"memory_cap": 5.0}]},
         "clock.devices[0].memory_cap"),
        (_clock(policy="sometimes"), "clock.policy"),
    ],
)  # fmt: skip
def test_bad_clock_values_name_the_key(clock, key):
    with pytest.raises(ConfigError) as error:
        tiny_config(clock=clock)
    assert error.value.key == key


def test_device_defaults_are_the_documented_step_time():
    device = DeviceClass("x", step_overhead=0.002, throughput=20000.0, saturation=64)
    assert device.step_seconds(16) == device.step_seconds(64) == 0.002 + 64 / 20000
    assert math.isclose(device.step_seconds(128), 0.002 + 128 / 20000)


def test_a_calibrated_profile_becomes_the_device_class(tmp_path):
    profile = tmp_path / "device.json"
    measured = DEVICE | {"name": "measured-cpu", "scaling": 0.5}
    profile.write_text(json.dumps({"device": measured}))
    cfg = tiny_config(clock={"name": "devices", "profile": str(profile)})
    assert cfg.clock.devices == (DeviceClass(**measured),)
    assert cfg.clock.profile is None  # the device travels in the config, not the file
    again = build_config(json.loads(cfg.to_json()))
    assert again.clock.devices == cfg.clock.devices
    with pytest.raises(ConfigError) as error:
        tiny_config(clock={"name": "devices", "profile": str(tmp_path / "missing.json")})
    assert error.value.key == "clock.profile"


def test_scaling_below_saturation_is_fitted_from_measured_times():
    truth = DeviceClass("t", step_overhead=0.001, throughput=5000.0, saturation=64, scaling=0.5)
    sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    fitted = fit_device(sizes, [truth.step_seconds(b) for b in sizes])
    assert fitted.saturation == 64 and fitted.scaling == pytest.approx(0.5)
    assert fitted.step_overhead == pytest.approx(0.001, rel=1e-6)
    assert fitted.throughput == pytest.approx(5000.0, rel=1e-6)
    # Below saturation: S·(B/S)^α samples' worth: B = 16 costs 64·(1/4)^0.5 = 32.
    assert truth.step_seconds(16) == pytest.approx(0.001 + 32 / 5000)


def test_unavailable_and_crashed_clients_are_counted_and_not_aggregated(tmp_path):
    _, rows, _ = _run(tmp_path, rounds=4, clients_per_round=6, clock=_clock(dropout=0.3, crash=0.3))
    assert sum(r["clients_unavailable"] for r in rows) > 0
    assert sum(r["clients_crashed"] for r in rows) > 0
    for row in rows:
        assert row["clients_sampled"] + row["clients_unavailable"] == 6
        aggregated = row["clients_sampled"] - row["clients_crashed"] - row["clients_dropped"]
        assert (row["steps"] or 0) == 15 * aggregated  # 15 steps per aggregated client


def test_batch_policies_give_each_device_its_own_b_or_time_budget(tmp_path):
    slow = DEVICE | {"name": "slow", "throughput": 1000.0, "memory_cap": 14.0}  # B ≤ 8 fits
    fast = DEVICE | {"name": "fast", "throughput": 3000.0}
    devices = {"name": "devices", "devices": [slow, fast]}

    def limits(**clock):
        cfg = tiny_config(clock=devices | clock)
        timer = RoundClock(cfg)
        return [(d.name, timer.limits(i, 16, 1000)) for i, d in enumerate(timer.device_of)]

    def client_batch(values) -> tuple[int, str]:
        device = DeviceLimit(values["device-batch-policy"], values["device-batch-value"])
        choice = choose_client_batch(tiny_config().batch, 16, 16, 0, 1000, 1000.0, device=device)
        return choice.size, choice.reason

    for name, values in limits(batch_policy="memory"):
        expected = (8, "device_memory") if name == "slow" else (16, "schedule")
        assert client_batch(values) == expected
    for name, values in limits(batch_policy="throughput"):  # mean throughput 2000
        assert client_batch(values) == (8 if name == "slow" else 24, "device_throughput")
    for name, values in limits(batch_policy="equal_time", deadline=2.0):
        # transfers: 0.1 + 8000/8e6 down, 0.1 + 8000/4e6 up; t(16) = 0.01 + 32/throughput
        budget = 2.0 - (0.1 + 0.001) - (0.1 + 0.002)
        step = 0.01 + 32 / (1000.0 if name == "slow" else 3000.0)
        assert values["exact-steps"] == math.floor(budget / step)
    _, rows, _ = _run(
        tmp_path, rounds=2, clock=devices | {"batch_policy": "equal_time", "deadline": 2.0}
    )
    assert all(r["round_virtual_seconds"] <= 2.0 for r in rows)


def _async_times(rows):
    return [(r["virtual_seconds"], r["staleness_max"]) for r in rows]


def test_fedbuff_orders_updates_by_virtual_finish_time_with_their_staleness(tmp_path):
    slow = DEVICE | {"name": "slow", "throughput": 250.0, "share": 0.5}
    fast = DEVICE | {"name": "fast", "throughput": 1000.0, "share": 0.5}
    clock = {"name": "devices", "devices": [slow, fast]}
    strategy = {"name": "fedbuff", "concurrency": 2, "buffer_size": 1}
    cfg, rows, _ = _run(
        tmp_path / "a", rounds=6, num_clients=2, clients_per_round=2, clock=clock,
        strategy=strategy,
    )  # fmt: skip
    # Each client always does 45 steps (719 or 718 samples, B = 16), so its round time is
    # fixed: the fast one arrives every T_fast, the slow one every T_slow, both from t = 0.
    model_bytes = record_bytes(model_to_arrays(workload_for(cfg.to_json()).initial_model()))
    transfers = 0.1 + 8 * model_bytes / 8e6 + 0.1 + 8 * model_bytes / 4e6
    t_fast, t_slow = transfers + 45 * (0.01 + 32 / 1000), transfers + 45 * (0.01 + 32 / 250)
    arrivals = sorted(
        [(k * t_fast, "fast") for k in range(1, 8)] + [(k * t_slow, "slow") for k in range(1, 3)]
    )[:6]
    expected, last = [], {"fast": 0, "slow": 0}  # version each client started from
    for version, (when, who) in enumerate(arrivals):
        expected.append((pytest.approx(when), version - last[who]))
        last[who] = version + 1
    assert _async_times(rows) == expected
    _, again, _ = _run(
        tmp_path / "b", rounds=6, num_clients=2, clients_per_round=2, clock=clock,
        strategy=strategy,
    )  # fmt: skip
    assert without_measured(again) == without_measured(rows)  # same seed, same events


def test_fedasync_mixes_each_arrival_and_learns(tmp_path):
    _, rows, _ = _run(
        tmp_path, rounds=8, clock=_clock(),
        strategy={"name": "fedasync", "concurrency": 3, "mixing": 0.6},
    )  # fmt: skip
    assert all(r["clients_replied"] == 1 for r in rows)
    assert rows[-1]["test_accuracy"] > 0.3  # from 0.1: mixing client models in helps


@pytest.mark.parametrize(
    ("strategy", "clock", "key"),
    [
        ({"name": "fedbuff", "buffer_size": 4, "concurrency": 2}, _clock(), "strategy.buffer_size"),
        ({"name": "fedbuff", "concurrency": 99}, _clock(), "strategy.concurrency"),
        ({"name": "fedbuff"}, {"name": "off"}, "clock"),
        ({"name": "fedasync", "hinge_cutof": None}, _clock(), "strategy.hinge_cutof"),  # typo
    ],
)
def test_bad_async_settings_name_the_key(strategy, clock, key):
    with pytest.raises(ConfigError) as error:
        check_strategy_params(tiny_config(strategy=strategy, clock=clock))
    assert error.value.key == key


def test_real_clock_uses_each_clients_measured_time(tmp_path):
    _, rows, _ = _run(tmp_path / "a", rounds=2, clock={"name": "real"})
    # No power model for a real device: its energy is unknown (null), not zero.
    assert all(r["round_virtual_seconds"] > 0 and r["energy_joules"] is None for r in rows)
    assert rows[1]["virtual_seconds"] == pytest.approx(
        rows[0]["round_virtual_seconds"] + rows[1]["round_virtual_seconds"]
    )
    _, late, _ = _run(
        tmp_path / "b",
        rounds=1,
        clock={"name": "real", "policy": "deadline_drop", "deadline": 1e-9},
    )
    assert late[0]["clients_dropped"] == 3 and late[0]["steps"] is None
    with pytest.raises(ConfigError) as error:
        tiny_config(clock={"name": "real", "policy": "deadline_partial", "deadline": 1.0})
    assert error.value.key == "clock"


def test_calibrate_writes_a_device_profile_the_clock_loads(tmp_path, capsys):
    from fedbatch.calibrate import main as calibrate

    calibrate(
        ["--batch-sizes", "1,8,64", "--variants", "fp32", "--repeats", "3",
         "--out", str(tmp_path), "model.hidden=[16]"]
    )  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "device model fit" in out and "fitted to 3 points" in out
    assert "presets (not measured on this machine" in out and "power=10 W" in out
    profile = json.loads((tmp_path / "device.json").read_text())
    device = profile["device"]
    cfg = tiny_config(clock={"name": "devices", "profile": str(tmp_path / "device.json")})
    (loaded,) = cfg.clock.devices
    assert loaded.throughput == device["throughput"] > 0
    assert loaded.memory_per_sample == device["memory_per_sample"] >= 0
    # The fitted values are the fit of the measurements written beside them.
    timing, memory = profile["fitted"]["step_time"], profile["fitted"]["memory"]
    fp32 = json.loads((tmp_path / "calibration.json").read_text())["variants"]["fp32"]
    assert timing["seconds"] == [row["seconds"] for row in fp32]
    refit = fit_device(timing["batch_sizes"], timing["seconds"], memory["mb"])
    for key in timing["keys"] + memory["keys"]:
        assert device[key] == getattr(refit, key), key


def test_a_device_profile_separates_fitted_values_from_presets():
    from fedbatch.calibrate import MB, device_profile

    truth = DeviceClass("t", step_overhead=0.001, throughput=5000.0, saturation=16, scaling=0.5,
                        memory_base=20.0, memory_per_sample=0.25)  # fmt: skip
    sizes = [1, 4, 16, 64, 256]
    rows = [
        {"batch_size": b, "seconds": truth.step_seconds(b), "peak_bytes": truth.memory_mb(b) * MB}
        for b in sizes
    ]
    profile = device_profile(rows, "cpu", 5, {"name": "mlp"})
    timing, memory = profile["fitted"]["step_time"], profile["fitted"]["memory"]
    assert timing["keys"] == ["step_overhead", "throughput", "saturation", "scaling"]
    assert memory["keys"] == ["memory_base", "memory_per_sample"]
    assert timing["points"] == memory["points"] == 5
    assert timing["max_relative_error"] < 1e-9 and memory["max_relative_error"] < 1e-9
    for key in timing["keys"] + memory["keys"]:
        assert profile["device"][key] == pytest.approx(getattr(truth, key), rel=1e-6), key
    # What calibrate cannot measure is named as such, at the defaults, never as fitted.
    presets = profile["presets"]["keys"]
    assert presets == ["memory_cap", "power", "bandwidth_down", "bandwidth_up", "latency"]
    assert "not measured" in profile["presets"]["note"]
    default = DeviceClass("default")
    assert all(profile["device"][key] == getattr(default, key) for key in presets)
    assert set(presets).isdisjoint(timing["keys"] + memory["keys"])


def test_async_run_stops_when_every_client_fails(tmp_path):
    tight = DEVICE | {"memory_cap": 14.0}  # B ≤ 8 fits; B = 16 fails every client
    _, rows, summary = _run(
        tmp_path, rounds=3, clock={"name": "devices", "devices": [tight]},
        strategy={"name": "fedbuff", "concurrency": 2, "buffer_size": 1},
    )  # fmt: skip
    assert summary["stopped_because"] == "all_clients_failed"
    # One row for the aggregation that never came: every client failed, and why.
    (row,) = rows
    assert (row["round"], row["clients_replied"], row["clients_failed"]) == (1, 0, 6)
    assert "does not fit this client's device memory" in row["client_error"]
    assert summary["client_error"] == row["client_error"]
    assert summary["rounds_trained"] == 0


def test_partial_work_plans_the_memory_split_passes(tmp_path):
    # Largest B that fits: (100 − 10) / 0.5 = 180 < 256: steps of 256 run as 2 passes.
    box = DEVICE | {"memory_cap": 100.0}
    clock = {"name": "devices", "devices": [box], "on_oom": "accumulate",
             "policy": "deadline_partial", "deadline": 1.5}  # fmt: skip
    _, rows, _ = _run(tmp_path, rounds=1, client={"batch_size": 256, "steps": 50}, clock=clock)
    assert rows[0]["clients_dropped"] == 0 and rows[0]["steps"] > 0
    assert rows[0]["round_virtual_seconds"] <= 1.5


def test_clients_that_fit_no_step_are_not_averaged_in(tmp_path):
    slow = DEVICE | {"name": "slow", "throughput": 10.0, "share": 0.5}  # 3.2 s per step
    clock = {"name": "devices", "devices": [slow, DEVICE | {"share": 0.5}],
             "policy": "deadline_partial", "deadline": 1.5}  # fmt: skip
    _, rows, _ = _run(tmp_path, rounds=1, clients_per_round=6, clock=clock)
    assert rows[0]["clients_dropped"] == 3  # the slow ones did nothing: not aggregated
    assert rows[0]["steps"] > 0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"batch": {"adascale": True}, "monitor": {"noise_scale": 1},
          "client": {"lr_scaling": "linear"}}, "client.lr_scaling"),
        ({"client": {"batch_size": "full"},
          "clock": _clock(policy="deadline_partial", deadline=1.0)}, "client.batch_size"),
    ],
)  # fmt: skip
def test_combinations_that_would_mislead_are_rejected(overrides, key):
    with pytest.raises(ConfigError) as error:
        tiny_config(**overrides)
    assert error.value.key == key


def test_async_strategies_reject_availability_settings():
    cfg = tiny_config(strategy={"name": "fedbuff"}, clock=_clock(dropout=0.2))
    with pytest.raises(ConfigError) as error:
        check_strategy_params(cfg)
    assert error.value.key == "clock.dropout"


def test_stream_windows_follow_each_other_when_rounds_outlast_them(tmp_path):
    # Rounds take ~1 s of device time plus waiting; windows of 0.5 s must not leave gaps.
    stream = {"name": "constant", "rate": 20.0, "round_seconds": 0.5, "passes": 1}
    _, rows, _ = _run(tmp_path, rounds=4, clients_per_round=6, stream=stream, clock=_clock())
    end = rows[-1]["virtual_seconds"] - rows[-1]["round_virtual_seconds"] + 0.5
    # Constant arrivals: everything that arrived before the last window's end, 6 clients.
    assert sum(r["samples_arrived"] for r in rows) == 6 * math.ceil(20.0 * end - 1)


def test_measured_seconds_of_a_clock_and_stream_run_stay_within_the_wall_time(tmp_path):
    """Virtual time (here thousands of device seconds) never leaks into measured time."""
    stream = {"name": "constant", "rate": 20.0, "round_seconds": 0.5, "passes": 1}
    before = time.perf_counter()
    _, rows, summary = _run(tmp_path, rounds=3, stream=stream, clock=_clock())
    wall = time.perf_counter() - before
    assert rows[-1]["virtual_seconds"] > 0.5 * 3  # rounds outlast their windows
    assert 0 < summary["seconds"] <= wall
    elapsed = [r["elapsed_seconds"] for r in rows]
    assert elapsed == sorted(elapsed) and 0 < elapsed[-1] <= summary["seconds"]
    assert all(0 < r["seconds"] <= r["elapsed_seconds"] for r in rows)
