"""Streaming partitions: arrivals, sample order, buffers, round plans and drift timing."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import numpy as np
import pytest

from fedbatch.config.stream import StreamConfig
from fedbatch.data.arrivals import BLOCK
from fedbatch.data.stream import ClientStream
from fedbatch.data.stream_rounds import StreamRound, StreamState, offer, plan_stream_round

LABELS = np.arange(100) % 10


def _stream(
    name: str = "constant", labels: np.ndarray = LABELS, seed: int = 0, client: int = 0, **kw: Any
) -> ClientStream:
    return ClientStream(StreamConfig(name=name, **kw), seed, client, labels, 10)


def _plan(
    stream: ClientStream,
    state: StreamState,
    t0: float,
    t1: float,
    batch: int,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    server_round: int = 1,
) -> StreamRound:
    return plan_stream_round(
        stream, state, t0, t1, batch, cfg=stream.cfg, epochs=epochs, max_steps=max_steps,
        seed=stream.seed, client=stream.client, server_round=server_round,
    )  # fmt: skip


def _news(plan: StreamRound) -> list[int]:
    return [int(o) for step, k in zip(plan.steps, plan.fresh, strict=True) for o in step[:k]]


# --- arrivals ---------------------------------------------------------------------------------


def test_constant_counts_and_times_are_exact():
    s = _stream(rate=5.0)
    assert s.rate == 5.0
    assert [s.count(t) for t in (-1.0, 0.0, 0.2, 0.2001, 2.0, 2.0001)] == [0, 0, 0, 1, 9, 10]
    assert s.times(0, 4).tolist() == [0.2, 0.4, 0.6, 0.8]
    assert s.times(8, 10).tolist() == [1.8, 2.0]
    odd = _stream(rate=3.0)  # times k/3 are not exact in binary: count must agree with them
    times = odd.times(0, 3000)
    assert [odd.count(t) for t in times] == list(range(3000))
    assert [odd.count(np.nextafter(t, math.inf)) for t in times] == list(range(1, 3001))


def test_static_stream_has_the_whole_partition_at_time_zero():
    s = _stream("static")
    assert (s.count(-1.0), s.count(0.0), s.count(1e9)) == (0, 100, 100)
    assert s.times(0, 100).tolist() == [0.0] * 100


@pytest.mark.parametrize("client", range(5))
def test_poisson_mean_count_within_three_sigma(client):
    s = _stream("poisson", rate=5.0, client=client)
    assert abs(s.count(1000.0) - 5000) < 3 * math.sqrt(5000)


@pytest.mark.parametrize(("t0", "t1"), [(0.0, 50.0), (BLOCK - 6.0, BLOCK + 4.0)])
def test_poisson_count_and_times_agree(t0, t1):
    s = _stream("poisson", rate=3.0, client=2)
    a, b = s.count(t0), s.count(t1)
    times = s.times(a, b)
    assert b - a > 10
    assert np.all(np.diff(times) > 0) and times[0] >= t0 and times[-1] < t1
    assert [s.count(t) for t in times] == list(range(a, b))
    assert [s.count(np.nextafter(t, math.inf)) for t in times] == list(range(a + 1, b + 1))


def test_arrivals_are_pure_functions_of_the_query():
    ts = np.random.default_rng(0).uniform(0, 3 * BLOCK, 200)
    forward = _stream("poisson", rate=2.0, client=4)
    backward = _stream("poisson", rate=2.0, client=4)
    counts = [forward.count(t) for t in np.sort(ts)]
    assert [backward.count(t) for t in np.sort(ts)[::-1]][::-1] == counts
    n = counts[-1]
    pieces = [backward.times(i, min(n, i + 997)) for i in range(0, n, 997)][::-1]
    assert np.array_equal(np.concatenate(pieces[::-1]), forward.times(0, n))
    other = _stream("poisson", rate=2.0, client=5)
    assert other.count(1000.0) != forward.count(1000.0)


def test_bursty_onoff_arrives_only_when_on():
    s = _stream("bursty", rate=5.0, pattern="onoff", period=10.0, duty=0.3, client=1)
    n = s.count(2000.0)
    times = s.times(0, n)
    assert np.all(times % 10.0 < 3.0)
    assert abs(n - 10000) < 3 * math.sqrt(10000)  # 50 per period on average
    per_period = np.bincount((times // 10).astype(int), minlength=200)
    assert abs(per_period.mean() - 50) < 3 * math.sqrt(50 / 200)


def test_bursty_diurnal_has_the_mean_rate_and_the_sinusoid():
    s = _stream("bursty", rate=5.0, pattern="diurnal", period=100.0, client=3)
    n = s.count(2000.0)
    assert abs(n - 10000) < 3 * math.sqrt(10000)
    rising = np.mean(s.times(0, n) % 100.0 < 50.0)  # ∫ 1 + sin over the first half
    assert abs(rising - (0.5 + 1 / math.pi)) < 0.02


def test_rate_spread_is_a_mean_one_log_normal():
    rates = np.array([_stream(rate=4.0, rate_spread=0.5, client=c).rate for c in range(2000)])
    assert len(np.unique(rates)) == 2000
    assert abs(rates.mean() / 4.0 - 1) < 0.05
    assert abs(np.log(rates / 4.0).std() - 0.5) < 0.03
    assert {_stream(rate=4.0, client=c).rate for c in range(5)} == {4.0}


# --- sample order -----------------------------------------------------------------------------


def test_each_cycle_is_a_fresh_permutation():
    s = _stream(labels=np.arange(7))
    cycles = s.samples(np.arange(28)).reshape(4, 7)
    for cycle in cycles:
        assert sorted(cycle.tolist()) == list(range(7))
    assert len({tuple(c) for c in cycles}) == 4
    assert np.array_equal(s.samples(np.arange(27, -1, -1))[::-1], cycles.reshape(-1))


def test_samples_far_into_the_stream_use_little_memory():
    s = _stream(labels=np.arange(1000) % 10)
    tracemalloc.start()
    try:
        out = s.samples(np.array([10**6, 10**6 + 5, 3 * 10**6]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (3,) and np.all((out >= 0) & (out < 1000))
    assert peak < 100_000  # a couple of permutations of the 1000-sample partition


# --- online single pass -----------------------------------------------------------------------


@pytest.mark.parametrize("batching", ["wait", "available"])
def test_online_uses_every_arrival_exactly_once(batching):
    s = _stream(
        "poisson", rate=7.0, passes=1, replay_ratio=0.25, buffer="window", capacity=50,
        batching=batching,
    )  # fmt: skip
    state, used = StreamState(), []
    for r in [r for r in range(20) if r not in (5, 6)]:  # rounds 5, 6: not sampled
        plan = _plan(s, state, 10.0 * r, 10.0 * r + 10, 8, max_steps=3 if r == 8 else None)
        pool = set(range(max(0, state.offered - 50), min(state.offered, state.consumed)))
        for step, k in zip(plan.steps, plan.fresh, strict=True):
            assert k == 6 or (batching == "available" and k < 6)
            assert set(step[k:].tolist()) <= pool  # already trained on, still in the window
            assert len(step) - k == (2 if pool else 0)
        used += _news(plan)
        state = plan.state
        assert state.offered == s.count(10.0 * r + 10)
    assert used == list(range(state.consumed))
    leftover = s.count(200.0) - state.consumed
    assert leftover == 0 if batching == "available" else 0 <= leftover < 6


def test_wait_batching_accounts_waiting_time():
    s = _stream(rate=2.0, passes=1)  # arrival i at (i + 1) / 2
    first = _plan(s, StreamState(), 0.0, 10.0, 4)  # 19 arrive; steps at 2, 4, 6, 8
    assert [st.tolist() for st in first.steps] == [list(range(i, i + 4)) for i in (0, 4, 8, 12)]
    assert (first.wait_seconds, first.samples_arrived, first.samples_trained) == (8.0, 19, 16)
    assert first.held == 19  # buffer=all
    assert first.state.consumed == 16  # 16, 17, 18 stay pending
    second = _plan(s, first.state, 10.0, 20.0, 4)  # steps at 10 (waits 0), 12, 14, 16, 18
    assert (len(second.steps), second.wait_seconds, second.state.consumed) == (5, 8.0, 36)
    assert second.steps[0].tolist() == [16, 17, 18, 19]
    fourth = _plan(s, second.state, 30.0, 40.0, 4)  # not sampled in [20, 30): 36..78 pending
    assert (len(fourth.steps), fourth.wait_seconds, fourth.state.consumed) == (10, 8.0, 76)
    starved = _plan(s, fourth.state, 40.0, 41.0, 4)  # 79, 80 arrive: 76..80 pending
    assert (len(starved.steps), starved.wait_seconds) == (1, 0.0)
    empty = _plan(s, starved.state, 41.0, 41.4, 4)
    assert (empty.steps, empty.wait_seconds, empty.state.consumed) == ([], pytest.approx(0.4), 80)


def test_available_batching_trains_on_what_is_there():
    s = _stream(rate=2.0, passes=1, batching="available")
    plan = _plan(s, StreamState(), 0.0, 10.0, 4)
    assert [len(st) for st in plan.steps] == [4, 4, 4, 4, 3]
    assert (plan.wait_seconds, plan.state.consumed, plan.fresh) == (0.0, 19, [4, 4, 4, 4, 3])
    capped = _plan(s, StreamState(), 0.0, 10.0, 4, max_steps=2)
    assert (len(capped.steps), capped.state.consumed) == (2, 8)
    late = _plan(s, plan.state, 10.0, 10.4, 4)  # arrival 19 at 10.0
    assert [st.tolist() for st in late.steps] == [[19]]
    assert _plan(s, late.state, 10.4, 10.45, 4).steps == []


def test_replayed_samples_come_from_the_buffer_before_the_round():
    s = _stream(rate=10.0, passes=1, replay_ratio=0.5, buffer="reservoir", capacity=20)
    first = _plan(s, StreamState(), 0.0, 5.0, 8)  # empty buffer: new samples only
    assert all(len(st) == 4 for st in first.steps) and first.state.consumed == 48
    second = _plan(s, first.state, 5.0, 10.0, 8, server_round=2)
    pool = set(first.state.buffer.tolist())
    assert all(len(st) == 8 and set(st[4:].tolist()) <= pool for st in second.steps)
    assert len(set(second.steps[0][4:].tolist())) == 4  # without replacement within a step
    again = _plan(s, first.state, 5.0, 10.0, 8, server_round=2)
    assert all(np.array_equal(a, b) for a, b in zip(again.steps, second.steps, strict=True))


# --- replay (epochs over the buffer) ----------------------------------------------------------


def test_static_replay_is_ordinary_epochs():
    s = _stream("static", labels=np.arange(10))
    plan = _plan(s, StreamState(), 0.0, 10.0, 4, epochs=2)
    assert [len(st) for st in plan.steps] == [4, 4, 2, 4, 4, 2]
    for epoch in (plan.steps[:3], plan.steps[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert (plan.fresh, plan.samples_arrived, plan.wait_seconds) == ([4, 4, 2, 0, 0, 0], 10, 0.0)
    later = _plan(s, plan.state, 10.0, 20.0, 4, server_round=2)
    assert (later.fresh, later.samples_arrived) == ([0, 0, 0], 0)


def test_replay_wait_and_available():
    s = _stream(rate=2.0)  # arrival i at (i + 1) / 2
    plan = _plan(s, StreamState(), 0.0, 10.0, 4)  # the 4th sample arrives at 2.0
    assert (plan.wait_seconds, [len(x) for x in plan.steps]) == (2.0, [4, 4, 4, 4, 3])
    assert sum(plan.fresh) == 19
    short = _plan(s, StreamState(), 0.0, 1.5, 4)  # 2 arrive: never 4
    assert (short.steps, short.wait_seconds, short.state.offered) == ([], 1.5, 2)
    later = _plan(s, plan.state, 10.0, 20.0, 4, server_round=2)  # 19 already held at t0
    assert later.wait_seconds == 0.0
    assert sum(later.fresh) == 20 and len(later.steps) == 10  # 39 held: 10 batches
    s = _stream(rate=2.0, batching="available")
    assert [len(x) for x in _plan(s, StreamState(), 0.0, 1.5, 4).steps] == [2]
    assert _plan(s, StreamState(), 0.0, 0.4, 4).steps == []


def test_replay_max_steps_is_exact_and_fresh_only_counts_first_uses():
    s = _stream(rate=2.0, buffer="window", capacity=1000)
    plan = _plan(s, StreamState(), 0.0, 10.0, 4, max_steps=7, epochs=1)
    assert [len(x) for x in plan.steps] == [4, 4, 4, 4, 3, 4, 4]
    assert plan.fresh == [4, 4, 4, 4, 3, 0, 0]
    for step, k in zip(plan.steps, plan.fresh, strict=True):
        assert np.all(step[:k] >= 0) and len(set(step.tolist())) == len(step)


def test_replay_wait_with_a_window_smaller_than_the_batch():
    s = _stream(rate=2.0, buffer="window", capacity=3)
    plan = _plan(s, StreamState(), 0.0, 10.0, 4)  # it can only ever hold 3: the 3rd is at 1.5
    assert plan.wait_seconds == 1.5
    assert [sorted(x.tolist()) for x in plan.steps] == [[16, 17, 18]]


# --- buffers ----------------------------------------------------------------------------------


def test_window_keeps_the_last_capacity_arrivals():
    cfg = StreamConfig(name="constant", buffer="window", capacity=5)
    state = offer(cfg, StreamState(), 3, 0, 0)
    assert state.buffer.tolist() == [0, 1, 2]
    state = offer(cfg, state, 12, 0, 0)
    assert (state.buffer.tolist(), state.offered) == ([7, 8, 9, 10, 11], 12)


def test_reservoir_is_uniform():
    cfg = StreamConfig(name="constant", buffer="reservoir", capacity=100)
    counts = np.zeros(100)
    for seed in range(200):
        state = offer(cfg, StreamState(), 5000, seed, 0)
        assert len(np.unique(state.buffer)) == 100
        counts += np.bincount(state.buffer // 50, minlength=100)
    expected = 200 * 100 / 100
    stat = float(((counts - expected) ** 2 / expected).sum())
    try:
        from scipy.stats import chi2

        assert chi2.sf(stat, df=99) > 0.001
    except ImportError:  # pragma: no cover
        assert stat < 160  # chi-square(99): p ≈ 1e-4


@pytest.mark.parametrize("buffer", ["window", "reservoir"])
def test_buffers_do_not_depend_on_how_time_is_split(buffer):
    s = _stream("poisson", rate=60.0, buffer=buffer, capacity=300, passes=1)
    whole = _plan(s, StreamState(), 0.0, 100.0, 16).state
    state = StreamState()
    for r in range(10):
        state = _plan(s, state, 10.0 * r, 10.0 * r + 10, 16, server_round=r).state
    assert whole.offered == state.offered > BLOCK
    assert np.array_equal(whole.buffer, state.buffer) and len(state.buffer) == 300
    uneven = StreamState()
    for upto in (1, 299, 300, 4000, 4100, whole.offered):
        uneven = offer(s.cfg, uneven, upto, s.seed, s.client)
    assert np.array_equal(uneven.buffer, whole.buffer)


def test_state_round_trips_through_arrays():
    for state in (StreamState(3, 7, None), StreamState(2, 9, np.array([4, 8, 1]))):
        values = state.to_arrays()
        back = StreamState.from_arrays({k: np.asarray(v) for k, v in values.items()})
        assert (back.consumed, back.offered) == (state.consumed, state.offered)
        assert (back.buffer is None) == (state.buffer is None)
        if state.buffer is not None:
            assert back.buffer.tolist() == state.buffer.tolist()


def test_plan_does_not_modify_the_state():
    s = _stream(rate=50.0, buffer="reservoir", capacity=10, passes=1, replay_ratio=0.5)
    state = _plan(s, StreamState(), 0.0, 1.0, 4).state
    buffer = state.buffer.copy()
    _plan(s, state, 1.0, 100.0, 4)
    assert np.array_equal(state.buffer, buffer) and state.offered == 49


# --- drift timing -----------------------------------------------------------------------------


def _drifting(mode: str, **kw: Any) -> ClientStream:
    defaults: dict[str, Any] = {"drift": "covariate", "drift_at": 50.0, "drift_mode": mode}
    return _stream(**({"rate": 10.0} | defaults | kw))


def test_sudden_drift_starts_exactly_at_the_onset():
    s = _drifting("sudden")
    assert s.onset == 50.0
    concepts = s.concepts(np.arange(s.count(100.0)))  # arrival i at (i + 1) / 10
    assert concepts.dtype == np.int8
    assert concepts[:499].sum() == 0 and np.all(concepts[499:] == 1)
    assert (s.concept_at(49.999), s.concept_at(50.0)) == (0.0, 1.0)


def test_gradual_drift_ramps_over_the_window():
    s = _drifting("gradual", drift_window=100.0, rate=100.0)
    ordinals = np.arange(s.count(150.0))
    concepts, times = s.concepts(ordinals), s.times(0, len(ordinals))
    assert concepts[times < 50.0].sum() == 0
    for tenth in range(10):
        inside = (times >= 50 + 10 * tenth) & (times < 60 + 10 * tenth)
        assert abs(concepts[inside].mean() - (tenth + 0.5) / 10) < 0.05
    assert s.concept_at(75.0) == 0.25 and s.concept_at(200.0) == 1.0


def test_recurrent_drift_alternates():
    s = _drifting("recurrent", drift_window=20.0)
    times = s.times(0, s.count(130.0))
    concepts = s.concepts(np.arange(len(times)))
    phase = np.where(times < 50, 0, np.where(((times - 50) // 20) % 2 == 0, 1, 0))
    assert np.array_equal(concepts, phase) and 0 < concepts.mean() < 1
    assert [s.concept_at(t) for t in (40, 55, 75, 95, 115)] == [0.0, 1.0, 0.0, 1.0, 0.0]


def test_staggered_onsets_stay_in_their_interval():
    onsets = [_drifting("sudden", drift_stagger=30.0, client=c).onset for c in range(50)]
    assert all(50.0 <= o <= 80.0 for o in onsets) and len(set(onsets)) == 50
    assert min(onsets) < 56 and max(onsets) > 74
    assert _stream(rate=10.0).onset == math.inf


def test_label_drift_moves_the_class_prior_after_the_onset_only():
    labels = np.arange(1000) % 10
    kw = {"rate": 100.0, "drift_at": 100.0, "label_alpha": 0.5}
    s = _stream(labels=labels, drift="label", **kw)
    plain = _stream(labels=labels, **kw)
    onset = s.count(100.0)  # 9999 arrivals before the onset
    before = np.arange(onset)
    assert np.array_equal(s.samples(before), plain.samples(before))
    after = s.samples(np.arange(onset, onset + 20000))
    hist = np.bincount(labels[after], minlength=10) / 20000
    q = s.label_prior()
    assert 0.5 * np.abs(hist - q).sum() < 0.03
    assert 0.5 * np.abs(hist - 0.1).sum() > 0.2  # a different prior from the partition's


def test_label_prior_only_uses_classes_the_client_has():
    s = _stream(labels=np.array([1, 1, 3, 3, 3]), drift="label", drift_at=1.0)
    q = s.label_prior()
    assert q.sum() == pytest.approx(1.0) and set(np.flatnonzero(q)) <= {1, 3}
    drawn = s.samples(np.arange(s.count(10.0), s.count(10.0) + 500))
    assert set(drawn.tolist()) <= set(range(5))


# --- memory -----------------------------------------------------------------------------------


def test_memory_stays_flat_over_a_million_arrivals():
    cfg: dict[str, Any] = {"rate": 1000.0, "passes": 1, "buffer": "window", "capacity": 1000}
    s = _stream("poisson", labels=np.arange(5000) % 10, **cfg, replay_ratio=0.2)
    state, peaks, trained = StreamState(), [], 0
    tracemalloc.start()
    try:
        for r in range(100):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            plan = _plan(s, state, 10.0 * r, 10.0 * r + 10, 100, server_round=r)
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
            state, trained = plan.state, trained + plan.state.consumed - state.consumed
            assert len(state.buffer) <= 1000
            del plan
    finally:
        tracemalloc.stop()
    assert state.offered == s.count(1000.0) > 990_000 and trained > 990_000
    assert max(peaks) < 1_000_000
    assert max(peaks[-10:]) <= 1.5 * max(peaks[:10])
    assert sum(v.nbytes for v in state.to_arrays().values() if hasattr(v, "nbytes")) <= 8000
    print(f"peak per round: first 10 {max(peaks[:10]) / 1e6:.2f} MB, "
          f"last 10 {max(peaks[-10:]) / 1e6:.2f} MB")  # fmt: skip
