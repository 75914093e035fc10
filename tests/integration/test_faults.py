"""Faults switched on by config (`faults.*`): crashes, bad replies, stragglers and poisoned
updates strike the clients the seed picks, and the server counts or aggregates them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from fedbatch.config import ConfigError, RunConfig
from fedbatch.engine import inprocess
from fedbatch.engine.vectorized import VectorizedGrid
from fedbatch.federated.server_app import run_experiment
from fedbatch.federated.workload import workload_for
from fedbatch.seeding import derive_seed
from tests.conftest import read_rows, tiny_config, without_measured

Weights = dict[str, torch.Tensor]


def _run(tmp_path: Path, **overrides: Any) -> tuple[RunConfig, list[dict[str, Any]], dict]:
    cfg = tiny_config(device="cpu", **overrides)
    summary = inprocess.run(cfg, tmp_path, progress=False)
    return cfg, read_rows(tmp_path)[1:], summary


def _strikes(cfg: RunConfig, fault: str, partition_id: int, server_round: int) -> bool:
    """Whether `fault` strikes this client this round: the first uniform draw of its stream."""
    seed = derive_seed(cfg.seed, "faults", partition_id, server_round, fault)
    draw = torch.rand((), generator=torch.Generator().manual_seed(seed))
    return float(draw) < getattr(cfg.faults, fault)


def _final_weights(run_dir: Path) -> Weights:
    return {k: v.double() for k, v in load_file(run_dir / "model.safetensors").items()}


def _initial_weights(cfg: RunConfig) -> Weights:
    model = workload_for(cfg.to_json()).initial_model()
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def _norm(weights: Weights) -> float:
    return math.sqrt(sum(float(w.pow(2).sum()) for w in weights.values()))


def test_every_client_crashing_ends_the_run_naming_the_fault(tmp_path):
    _, rows, summary = _run(tmp_path, faults={"crash": 1.0})
    assert summary["stopped_because"] == "all_clients_failed"
    assert (summary["clients_failed_total"], summary["clients_rejected_total"]) == (3, 0)
    assert [(r["clients_failed"], r["clients_replied"]) for r in rows] == [(3, 0)]
    assert "RuntimeError: injected fault (faults.crash)" in rows[0]["client_error"]


def test_the_seed_picks_the_crashing_clients_on_every_engine(tmp_path):
    shape = {"rounds": 4, "num_clients": 6, "clients_per_round": 6}  # every client, every round
    cfg, rows, summary = _run(tmp_path / "inprocess", faults={"crash": 0.5}, **shape)
    predicted = [
        sum(_strikes(cfg, "crash", client, server_round) for client in range(6))
        for server_round in range(1, 5)
    ]
    assert 0 < sum(predicted) < 24 and max(predicted) < 6  # some crash, no round stops the run
    assert [r["clients_failed"] for r in rows] == predicted
    assert [r["clients_replied"] for r in rows] == [6 - n for n in predicted]
    assert (summary["clients_failed_total"], summary["clients_rejected_total"]) == (
        sum(predicted),
        0,
    )
    grid = VectorizedGrid(cfg)  # falls back to the ClientApp, which acts the faults out
    run_experiment(grid, cfg, tmp_path / "vectorized", progress=False)
    assert grid.batched == 0
    assert without_measured(read_rows(tmp_path / "vectorized")) == without_measured(
        read_rows(tmp_path / "inprocess")
    )


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("nan", "is not finite"), ("inflate", "num-examples=1e+15 is outside 1..")],
)
def test_bad_replies_are_rejected_and_the_model_stays_finite(tmp_path, fault, reason):
    cfg, rows, summary = _run(tmp_path, faults={fault: 1.0})
    assert [(r["clients_rejected"], r["clients_failed"]) for r in rows] == [(3, 3)]
    assert "rejected by the server: " in rows[0]["client_error"]
    assert reason in rows[0]["client_error"]
    assert summary["stopped_because"] == "all_clients_failed"
    assert summary["clients_rejected_total"] == summary["clients_failed_total"] == 3
    final, initial = _final_weights(tmp_path), _initial_weights(cfg)
    assert all(torch.equal(final[k], initial[k]) for k in initial)  # nothing aggregated
    assert math.isfinite(rows[0]["test_loss"])


def _one_client_round(tmp_path: Path, name: str, faults: dict[str, float]) -> Weights:
    """The global weights after one round of one client: under FedAvg, its reply."""
    _run(tmp_path / name, rounds=1, clients_per_round=1, faults=faults)
    return _final_weights(tmp_path / name)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_flipped_update_is_the_clean_one_reversed(tmp_path, scale):
    clean = _one_client_round(tmp_path, "clean", {})
    flipped = _one_client_round(tmp_path, "flip", {"flip": 1.0, "flip_scale": scale})
    start = _initial_weights(tiny_config(device="cpu"))
    for key, w0 in start.items():
        delta = clean[key] - w0
        assert delta.abs().max() > 0, key
        torch.testing.assert_close(flipped[key], w0 - scale * delta, rtol=0, atol=1e-6)


def test_noise_has_the_norm_asked_for_relative_to_the_update(tmp_path):
    clean = _one_client_round(tmp_path, "clean", {})
    noisy = _one_client_round(tmp_path, "noise", {"noise": 1.0, "noise_scale": 0.5})
    start = _initial_weights(tiny_config(device="cpu"))
    delta = {k: clean[k] - w0 for k, w0 in start.items()}
    noise = {k: noisy[k] - clean[k] for k in start}
    assert _norm(noise) / _norm(delta) == pytest.approx(0.5, abs=1e-5)
    cosine = sum(float((noise[k] * delta[k]).sum()) for k in start) / _norm(noise) / _norm(delta)
    assert abs(cosine) < 0.1  # a random direction, not the update's own


def test_a_slow_client_delays_the_round(tmp_path):
    _, rows, summary = _run(tmp_path, rounds=1, faults={"slow": 1.0, "slow_seconds": 0.2})
    assert rows[0]["seconds"] >= 0.2
    assert rows[0]["clients_failed"] == 0 and summary["stopped_because"] == "rounds"


@pytest.mark.parametrize(
    ("faults", "key"),
    [
        ({"flip": 1.5}, "faults.flip"),
        ({"noise_scale": math.inf}, "faults.noise_scale"),
        ({"slow_seconds": -1.0}, "faults.slow_seconds"),
        ({"crash": True}, "faults.crash"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(faults, key):
    with pytest.raises(ConfigError) as error:
        tiny_config(faults=faults)
    assert str(error.value).startswith(f"{key}=")
    assert "\n" not in str(error.value)
