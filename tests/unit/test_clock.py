"""Virtual clock: hand-computed times, deadlines, over-selection, memory, device mixes, fits."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from fedbatch.clock.devices import DeviceClass, assign_devices, fit_device, relative_errors
from fedbatch.clock.network import transfer_seconds
from fedbatch.clock.scheduler import ClientTiming, client_timing, partial_steps, schedule_round
from fedbatch.seeding import derive_seed

MB = 1_000_000  # network sizes in decimal megabytes: 4 MB = 32 Mbit

# t(B) = 0.01 + max(B, 32) / 1000; 8 Mbit/s down, 4 Mbit/s up, 0.1 s per transfer
SLOW = DeviceClass(
    "slow",
    step_overhead=0.01,
    throughput=1000.0,
    saturation=32,
    power=5.0,
    bandwidth_down=8.0,
    bandwidth_up=4.0,
    latency=0.1,
)
# t(B) = 0.002 + max(B, 16) / 10000; 80 Mbit/s down, 40 Mbit/s up, 0.02 s per transfer
FAST = DeviceClass(
    "fast",
    step_overhead=0.002,
    throughput=10000.0,
    saturation=16,
    power=20.0,
    bandwidth_down=80.0,
    bandwidth_up=40.0,
    latency=0.02,
)


def test_step_time_is_flat_below_saturation_then_linear_in_b():
    assert SLOW.step_seconds(1) == pytest.approx(0.01 + 32 / 1000)  # 0.042
    assert SLOW.step_seconds(16) == SLOW.step_seconds(32) == SLOW.step_seconds(1)
    assert SLOW.step_seconds(64) == pytest.approx(0.01 + 64 / 1000)  # 0.074
    # each micro-batch is a pass: 10 steps · 2 micro-batches · 0.074 s
    assert SLOW.compute_seconds(10, 64, accumulate=2) == pytest.approx(1.48)


def test_transfer_is_latency_plus_bits_over_bandwidth():
    assert transfer_seconds(4 * MB, 8.0, 0.1) == pytest.approx(0.1 + 32 / 8)  # 4.1 s
    assert transfer_seconds(1 * MB, 8.0, 0.05) == pytest.approx(1.05)
    assert transfer_seconds(0, 8.0, 0.05) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="bandwidth"):
        transfer_seconds(1, 0.0, 0.1)


def test_two_clients_with_known_profiles_have_exact_virtual_times():
    slow = client_timing(
        0, SLOW, steps=10, batch_size=16, accumulate=1, download_bytes=4 * MB, upload_bytes=4 * MB
    )
    # down: 0.1 + 32 Mbit / 8 Mbit/s = 4.1; compute: 10 · (0.01 + 32/1000) = 0.42;
    # up: 0.1 + 32 / 4 = 8.1; total 12.62 s; energy 5 W · 0.42 s = 2.1 J
    assert slow.download == pytest.approx(4.1)
    assert slow.compute == pytest.approx(0.42)
    assert slow.upload == pytest.approx(8.1)
    assert slow.total == pytest.approx(12.62)
    assert slow.energy == pytest.approx(2.1)
    fast = client_timing(
        1,
        FAST,
        steps=10,
        batch_size=64,
        accumulate=2,
        download_bytes=4 * MB,
        upload_bytes=4 * MB,
        wait=0.5,
    )
    # down: 0.02 + 32/80 = 0.42; compute: 10 · 2 · (0.002 + 64/10000) = 0.168;
    # up: 0.02 + 32/40 = 0.82; waiting 0.5; total 1.908 s; energy 20 W · 0.168 s = 3.36 J
    assert fast.download == pytest.approx(0.42)
    assert fast.compute == pytest.approx(0.168)
    assert fast.upload == pytest.approx(0.82)
    assert fast.total == pytest.approx(0.42 + 0.5 + 0.168 + 0.82)
    assert fast.energy == pytest.approx(3.36)
    schedule = schedule_round([slow, fast], policy="wait_all", deadline=None, wanted=2)
    assert (schedule.kept, schedule.dropped) == ([0, 1], [])
    assert schedule.duration == pytest.approx(12.62)
    # a 5 s deadline drops the slow client; the round lasts the whole deadline
    schedule = schedule_round([slow, fast], policy="deadline_drop", deadline=5.0, wanted=2)
    assert (schedule.kept, schedule.dropped, schedule.duration) == ([1], [0], 5.0)


def test_energy_is_power_times_compute_seconds():
    assert DeviceClass("d", power=12.0).energy_joules(2.5) == pytest.approx(30.0)
    timing = client_timing(
        0, SLOW, steps=5, batch_size=64, accumulate=1, download_bytes=0, upload_bytes=0
    )
    assert timing.energy == pytest.approx(5.0 * 5 * 0.074)


def _timings(totals: list[float]) -> list[ClientTiming]:
    """Client i takes totals[i] (all of it as compute)."""
    return [ClientTiming(i, 0.0, t, 0.0, 0.0, 0.0) for i, t in enumerate(totals)]


def test_deadline_drops_exactly_the_stragglers():
    timings = _timings([1.0, 2.0, 3.0, 4.0, 5.0])
    schedule = schedule_round(timings, policy="deadline_drop", deadline=3.5, wanted=5)
    assert (schedule.kept, schedule.dropped, schedule.duration) == ([0, 1, 2], [3, 4], 3.5)
    on_the_deadline = schedule_round(timings, policy="deadline_drop", deadline=3.0, wanted=5)
    assert on_the_deadline.kept == [0, 1, 2]  # finishing exactly at the deadline counts
    nobody_late = schedule_round(timings, policy="deadline_drop", deadline=10.0, wanted=5)
    assert (nobody_late.kept, nobody_late.duration) == ([0, 1, 2, 3, 4], 5.0)
    everyone_late = schedule_round(timings, policy="deadline_drop", deadline=0.5, wanted=5)
    assert (everyone_late.kept, everyone_late.dropped) == ([], [0, 1, 2, 3, 4])
    assert everyone_late.duration == 0.5


def test_over_selection_keeps_the_k_fastest_and_lasts_until_the_kth_finish():
    timings = _timings([5.0, 1.0, 4.0, 2.0, 6.0, 3.0])
    schedule = schedule_round(timings, policy="wait_all", deadline=None, wanted=4)
    assert (schedule.kept, schedule.dropped, schedule.duration) == ([1, 2, 3, 5], [0, 4], 4.0)
    # with a deadline: 3 make 3.5 s, 2 wanted → the round ends at the 2nd finish (2 s)
    schedule = schedule_round(timings, policy="deadline_drop", deadline=3.5, wanted=2)
    assert (schedule.kept, schedule.dropped, schedule.duration) == ([1, 3], [0, 2, 4, 5], 2.0)
    # fewer than wanted make it: the server waits until the deadline
    schedule = schedule_round(timings, policy="deadline_drop", deadline=2.5, wanted=4)
    assert (schedule.kept, schedule.duration) == ([1, 3], 2.5)
    # ties broken by client id
    tied = schedule_round(_timings([2.0, 1.0, 1.0]), policy="wait_all", deadline=None, wanted=1)
    assert (tied.kept, tied.dropped, tied.duration) == ([1], [0, 2], 1.0)


def test_schedule_edge_cases_and_errors():
    empty = schedule_round([], policy="wait_all", deadline=None, wanted=3)
    assert (empty.kept, empty.dropped, empty.duration) == ([], [], 0.0)
    timings = _timings([1.0, 2.0])
    with pytest.raises(ValueError, match="policy"):
        schedule_round(timings, policy="fastest", deadline=None, wanted=2)
    with pytest.raises(ValueError, match="deadline"):
        schedule_round(timings, policy="deadline_drop", deadline=None, wanted=2)
    with pytest.raises(ValueError, match="deadline"):
        schedule_round(timings, policy="deadline_drop", deadline=0.0, wanted=2)
    with pytest.raises(ValueError, match="wanted"):
        schedule_round(timings, policy="wait_all", deadline=None, wanted=0)


def test_partial_steps_counts_the_steps_that_fit():
    # per step: 2 micro-batches · 0.042 s = 0.084 s; budget 20 − 4.1 − 8.1 − 0.5 = 7.3 s
    # → ⌊7.3 / 0.084⌋ = 86 (86 · 0.084 = 7.224 ≤ 7.3 < 87 · 0.084 = 7.308)
    kwargs = {"batch_size": 16, "download": 4.1, "upload": 8.1}
    assert partial_steps(SLOW, deadline=20.0, accumulate=2, wait=0.5, **kwargs) == 86
    assert partial_steps(SLOW, deadline=12.0, accumulate=1, **kwargs) == 0  # transfers alone miss
    # a budget of exactly 10 steps: 4.1 + 8.1 + 10 · 0.042 = 12.62 → 10 steps, and a client
    # doing them is on time for schedule_round
    steps = partial_steps(SLOW, deadline=12.62, accumulate=1, **kwargs)
    assert steps == 10
    timing = client_timing(
        0, SLOW, steps=steps, batch_size=16, accumulate=1, download_bytes=4 * MB,
        upload_bytes=4 * MB,
    )  # fmt: skip
    assert schedule_round([timing], policy="deadline_drop", deadline=12.62, wanted=1).kept == [0]


def test_largest_batch_is_exact_and_zero_when_the_model_does_not_fit():
    device = DeviceClass("d", memory_base=50.0, memory_per_sample=0.25, memory_cap=100.0)
    assert device.memory_mb(200) == 100.0
    assert device.largest_batch() == 200  # 50 + 200 · 0.25 = 100 ≤ 100 < 50 + 201 · 0.25
    phone = DeviceClass("d", memory_base=40.0, memory_per_sample=0.5, memory_cap=256.0)
    assert phone.largest_batch() == 432  # (256 − 40) / 0.5
    decimal = DeviceClass("d", memory_base=10.0, memory_per_sample=0.3, memory_cap=100.0)
    assert decimal.largest_batch() == 300  # 90 / 0.3, whatever the division rounds to
    assert DeviceClass("d", memory_base=50.0, memory_cap=40.0).largest_batch() == 0
    tight = DeviceClass("d", memory_base=50.0, memory_per_sample=0.25, memory_cap=50.1)
    assert tight.largest_batch() == 0  # even B = 1 needs 50.25 MB
    flat = DeviceClass("d", memory_base=50.0, memory_per_sample=0.0, memory_cap=60.0)
    assert flat.largest_batch() == sys.maxsize


def test_assign_devices_counts_by_largest_remainder():
    classes = [DeviceClass(n, share=s) for n, s in (("a", 0.5), ("b", 0.3), ("c", 0.2))]

    def counts(n: int) -> list[int]:
        return np.bincount(assign_devices(classes, n, seed=0), minlength=3).tolist()

    assert counts(10) == [5, 3, 2]
    assert counts(7) == [4, 2, 1]  # quotas 3.5, 2.1, 1.4 → 3, 2, 1 + the largest remainder (a)
    assert counts(0) == [0, 0, 0]
    thirds = [DeviceClass(n, share=1.0) for n in "abc"]  # unnormalised; ties → lower index
    assert np.bincount(assign_devices(thirds, 4, seed=0)).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="at least one class"):
        assign_devices([], 3, seed=0)
    with pytest.raises(ValidationError, match="share"):
        DeviceClass("a", share=0.0)


def test_assign_devices_is_a_seeded_shuffle():
    classes = [DeviceClass("a", share=0.5), DeviceClass("b", share=0.5)]
    first = assign_devices(classes, 20, seed=1)
    assert first == assign_devices(classes, 20, seed=1)
    assert first != assign_devices(classes, 20, seed=2)
    rng = np.random.default_rng(derive_seed(1, "devices"))
    assert first == rng.permutation([0] * 10 + [1] * 10).tolist()


BATCHES = [2**i for i in range(11)]  # 1 … 1024


@pytest.mark.parametrize("saturation", [1, 32, 256])
def test_fit_device_recovers_exact_parameters(saturation: int):
    true = DeviceClass(
        "true", step_overhead=0.003, throughput=5000.0, saturation=saturation,
        memory_base=120.0, memory_per_sample=0.75,
    )  # fmt: skip
    seconds = [true.step_seconds(b) for b in BATCHES]
    memory = [true.memory_mb(b) for b in BATCHES]
    fit = fit_device(BATCHES, seconds, memory, name="cpu")
    assert fit.name == "cpu"
    assert fit.saturation == saturation
    assert fit.step_overhead == pytest.approx(0.003, rel=1e-6)
    assert fit.throughput == pytest.approx(5000.0, rel=1e-6)
    assert fit.memory_base == pytest.approx(120.0, rel=1e-6)
    assert fit.memory_per_sample == pytest.approx(0.75, rel=1e-6)
    assert max(relative_errors(fit, BATCHES, seconds)) < 1e-9
    assert fit.memory_cap == DeviceClass("x").memory_cap  # not measured: the default


def test_fit_device_on_noisy_times_stays_within_15_percent():
    true = DeviceClass("true", step_overhead=0.01, throughput=20000.0, saturation=64)
    rng = np.random.default_rng(derive_seed(0, "test_clock", "noise"))
    noise = rng.uniform(-0.05, 0.05, len(BATCHES))
    seconds = [true.step_seconds(b) * (1 + e) for b, e in zip(BATCHES, noise, strict=True)]
    fit = fit_device(BATCHES, seconds)
    assert fit.memory_base == true.memory_base  # no memory given: defaults
    assert max(relative_errors(fit, BATCHES, seconds)) <= 0.15
    assert fit.throughput == pytest.approx(true.throughput, rel=0.15)
    truth = [true.step_seconds(b) for b in BATCHES]
    assert max(relative_errors(fit, BATCHES, truth)) <= 0.15


def test_fit_device_edge_cases():
    single = fit_device([8], [0.01])  # one point: all the time is throughput-bound
    assert (single.step_overhead, single.saturation) == (0.0, 8)
    assert single.throughput == pytest.approx(800.0)
    with pytest.raises(ValueError):
        fit_device([1, 2], [0.1])
    with pytest.raises(ValueError):
        fit_device([1, 2], [0.1, 0.0])


def test_relative_errors_per_point():
    # t(16) = 0.042 against 0.084 measured → 0.5; t(64) = 0.074 against 0.0925 → 0.2
    errors = relative_errors(SLOW, [16, 64], [0.084, 0.0925])
    assert errors == pytest.approx([0.5, 0.2])


def test_staleness_weights_equal_the_formulas():
    from fedbatch.clock.scheduler import staleness_weight

    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(1 / math.sqrt(4))  # FedBuff 1/√(1+τ)
    assert staleness_weight(3, 1.0) == pytest.approx(0.25)
    assert staleness_weight(2, 0.5, cutoff=2) == 1.0  # hinge: 1 up to b
    assert staleness_weight(6, 0.5, cutoff=2) == pytest.approx(1 / (0.5 * 4 + 1))
    with pytest.raises(ValueError):
        staleness_weight(-1, 0.5)


def test_spread_varies_each_clients_device_around_its_class():
    from fedbatch.clock.devices import spread_device

    base = DeviceClass("x", throughput=1000.0, bandwidth_down=50.0, bandwidth_up=10.0)
    assert spread_device(base, 0.0, 1, 3) is base
    clients = [spread_device(base, 0.5, 1, c) for c in range(4000)]
    throughputs = np.array([d.throughput for d in clients])
    assert throughputs.mean() == pytest.approx(1000.0, rel=0.03)  # mean-1 factor
    assert np.log(throughputs).std() == pytest.approx(0.5, rel=0.05)
    assert spread_device(base, 0.5, 1, 7) == clients[7]  # seeded per client
    ratio = [d.bandwidth_up / d.bandwidth_down for d in clients[:10]]
    assert ratio == pytest.approx([0.2] * 10)  # one network factor per client


def test_client_devices_drawn_on_demand_equal_drawing_them_all():
    from fedbatch.clock.devices import ClientDevices, spread_device

    classes = [DeviceClass("a", share=1, throughput=500.0), DeviceClass("b", share=3)]
    devices = ClientDevices(classes, 50, 0.4, 9)
    eager = [
        spread_device(classes[c], 0.4, 9, i) for i, c in enumerate(assign_devices(classes, 50, 9))
    ]
    assert devices._drawn == {}  # nothing drawn up front
    assert devices[17] == eager[17] and devices[-1] == eager[49] and len(devices) == 50
    assert list(devices._drawn) == [17, 49]
    assert list(devices) == eager
    assert devices.mean_throughput() == sum(d.throughput for d in eager) / 50
    with pytest.raises(IndexError):
        devices[50]
