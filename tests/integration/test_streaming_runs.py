"""Streaming partitions end to end on the in-process engine: fields, accounting, drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbatch.config import ConfigError
from fedbatch.engine import inprocess
from tests.conftest import read_rows, tiny_config

ONLINE = {"name": "poisson", "rate": 3.0, "round_seconds": 10.0, "passes": 1}


def _run(tmp_path: Path, **overrides) -> list[dict]:
    cfg = tiny_config(**overrides)
    inprocess.run(cfg, tmp_path, progress=False)
    return read_rows(tmp_path)[1:]


def test_online_stream_trains_every_arrival_once_when_all_clients_take_part(tmp_path):
    rows = _run(
        tmp_path,
        rounds=4,
        clients_per_round=6,
        stream=ONLINE | {"batching": "available"},
    )
    # `available` trains on everything that arrived, once: nothing is left pending.
    for row in rows:
        assert row["samples_trained"] == row["samples_arrived"] > 0
        assert row["wait_seconds"] == 0.0
        assert row["virtual_seconds"] == 10.0 * row["round"]
        assert 0.0 <= row["prequential_accuracy"] <= 1.0
        assert row["prequential_loss"] > 0.0


def test_waiting_for_b_new_samples_leaves_a_remainder_and_counts_waiting(tmp_path):
    rows = _run(
        tmp_path,
        rounds=4,
        clients_per_round=6,
        client={"batch_size": 8},
        stream=ONLINE | {"name": "constant", "batching": "wait"},
    )
    arrived = sum(r["samples_arrived"] for r in rows)
    trained = sum(r["samples_trained"] for r in rows)
    # Constant rate 3/s: 30 arrivals per client per round, 29 in the first (the i-th at
    # (i+1)/3 s); steps of 8 new samples, the remainder waits for the next round.
    assert arrived == 6 * (4 * 30 - 1)
    assert trained == 6 * 8 * ((4 * 30 - 1) // 8)
    assert all(r["steps"] * 8 == r["samples_trained"] for r in rows)
    assert all(r["wait_seconds"] > 0 for r in rows)


def test_sudden_concept_drift_followed_by_the_test_set_drops_accuracy(tmp_path):
    rows = _run(
        tmp_path,
        rounds=7,
        clients_per_round=6,
        client={"batch_size": 1, "lr": 0.1},
        stream=ONLINE | {"drift": "concept", "drift_at": 60.0},
        eval={"follow_drift": True},
    )
    before, at_drift = rows[4]["test_accuracy"], rows[5]["test_accuracy"]  # rounds 5 and 6
    assert before > 0.5  # the model has learned the first concept
    assert at_drift < before / 2  # labels are permuted from t = 60 s: it predicts old ones


def test_replay_over_a_window_buffer_weighs_clients_by_what_they_hold(tmp_path):
    rows = _run(
        tmp_path,
        rounds=3,
        clients_per_round=6,
        stream={"name": "constant", "rate": 2.0, "buffer": "window", "capacity": 25},
    )
    # After round 1 each client holds min(19, 25) arrivals, then the last 25.
    assert [r["examples"] for r in rows] == [6 * 19, 6 * 25, 6 * 25]
    assert all(r["steps"] > 0 for r in rows)


@pytest.mark.parametrize(
    ("stream", "key"),
    [
        ({"name": "poisson", "rate": 0}, "stream.rate"),
        ({"name": "poisson", "capacity": 0}, "stream.capacity"),
        ({"name": "poisson", "drift": "concept", "drift_at": 1e6}, "stream.drift_at"),
        (
            {"name": "poisson", "drift": "label", "drift_at": 5, "drift_mode": "gradual",
             "drift_window": 1e6},
            "stream.drift_window",
        ),
        ({"name": "static", "drift": "concept", "drift_at": 5}, "stream.drift"),
        ({"name": "poisson", "passes": 2}, "stream.passes"),
    ],
)  # fmt: skip
def test_bad_stream_values_name_the_key(stream, key):
    with pytest.raises(ConfigError) as error:
        tiny_config(stream=stream)
    assert error.value.key == key


def test_stream_batches_are_not_capped_by_the_partition_size(tmp_path):
    # 239–240 samples per partition, but a stream keeps arriving: B = 256 stays 256.
    rows = _run(
        tmp_path,
        rounds=3,
        clients_per_round=6,
        client={"batch_size": 256},
        stream=ONLINE | {"name": "constant", "rate": 50.0, "batching": "wait"},
    )
    assert all(r["batch_size"] == 256 for r in rows)
    assert sum(r["samples_trained"] for r in rows) == 256 * sum(r["steps"] for r in rows)
