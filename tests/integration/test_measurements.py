"""The published quantities end to end, each against an independent computation: the
global noise scale against exact per-example gradients of the pooled data, the true
generalization gap of the global model, and steps/examples to target by hand."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fedbatch.engine import inprocess
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.nodes import PartitionedGrid, partition_order
from fedbatch.federated.records import load_arrays, model_to_arrays
from fedbatch.federated.server_app import run_rounds, standard_callbacks
from fedbatch.federated.workload import build_workload
from fedbatch.local.noise import exact_noise
from fedbatch.metrics.callbacks import Callback, RoundState
from fedbatch.seeding import derive_seed
from tests.conftest import read_rows, tiny_config


def _final_weights(cfg, tmp_path) -> tuple[Any, list[dict[str, Any]]]:
    """Run `cfg` in process; return the workload, the global weights after each round."""
    workload = build_workload(cfg)
    seen: list[Any] = []

    class Keep(Callback):
        def on_round_end(self, state: RoundState) -> None:
            seen.append(state.arrays)

    callbacks, _ = standard_callbacks(workload, tmp_path, progress=False)
    grid = InProcessGrid(cfg.num_clients)
    ordered = PartitionedGrid(grid, partition_order(grid, cfg), cfg.engine.round_timeout)
    run_rounds(
        ordered,
        cfg,
        [*callbacks, Keep()],
        initial_arrays=model_to_arrays(workload.initial_model()),
        partition_sizes=[len(p) for p in workload.partitions],
    )
    return workload, seen


def test_global_noise_scale_matches_exact_per_example_gradients_of_the_pooled_data(tmp_path):
    """IID clients at (practically) fixed weights: the run-averaged across-client estimate
    is within 10% of tr(Σ)/|G|² computed from every pooled sample's own gradient."""
    cfg = tiny_config(
        rounds=40,
        num_clients=8,
        clients_per_round=8,
        device="cpu",
        model={"name": "logreg"},
        client={"batch_size": 32, "lr": 1e-12, "steps": 1},
        monitor={"noise_across": 1, "noise_average": "mean", "grad_norm": 0, "noise_exact": 20},
        eval={"every": 40, "train_samples": 0},
    )
    inprocess.run(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    workload = build_workload(cfg)
    model = workload.initial_model()
    pooled = torch.cat([torch.as_tensor(p) for p in workload.partitions])
    grad_sq, trace = exact_noise(
        model, F.cross_entropy, workload.x_train[pooled], workload.y_train[pooled]
    )
    exact = trace / grad_sq
    last = rows[-1]
    assert last["noise_scale_global_draws"] == pytest.approx(40)
    assert last["noise_scale_global"] == pytest.approx(exact, rel=0.10)
    # the standard error says how far the estimate may be: exact is within 3 of them
    assert abs(last["noise_scale_global"] - exact) < 3 * last["noise_scale_global_se"]
    # the server's own exact reference, at the weights round 20 and 40 started from
    assert [r["noise_scale_exact_global"] is not None for r in rows[19:22]] == [False, True, False]
    assert last["noise_scale_exact_global"] == pytest.approx(exact, rel=1e-4)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["noise_scale_global"] == pytest.approx(last["noise_scale_global"])


def test_generalization_gap_is_the_global_models_test_minus_train_loss(tmp_path):
    """A wide MLP trained long on 4 × ~90 samples overfits: the gap is positive, and it is
    the same model's test loss minus its loss on the whole pooled training data."""
    cfg = tiny_config(
        rounds=12,
        num_clients=4,
        clients_per_round=4,
        device="cpu",
        data={"name": "digits", "test_fraction": 0.8},
        model={"name": "mlp", "hidden": [256], "norm": "none"},
        client={"batch_size": 8, "epochs": 5, "lr": 0.1},
        eval={"train_samples": 100_000},  # more than there are: the whole pooled data
    )
    workload, weights = _final_weights(cfg, tmp_path)
    rows = read_rows(tmp_path)
    model = workload.initial_model()
    load_arrays(model, weights[-1])
    pooled = torch.cat([torch.as_tensor(p) for p in workload.partitions])
    with torch.no_grad():
        train_loss = float(
            F.cross_entropy(model(workload.x_train[pooled]), workload.y_train[pooled])
        )
        test_loss = float(F.cross_entropy(model(workload.x_test), workload.y_test))
    last = rows[-1]
    assert last["global_train_loss"] == pytest.approx(train_loss, rel=1e-4)
    assert last["test_loss"] == pytest.approx(test_loss, rel=1e-4)
    assert last["generalization_gap"] == pytest.approx(test_loss - train_loss, rel=1e-3)
    assert last["generalization_gap"] > 0.05  # it overfits
    assert last["global_train_accuracy"] > last["test_accuracy"]


def test_steps_and_examples_to_target_sum_the_rounds_by_hand(tmp_path):
    """4 IID clients of 359 or 360 digits, all in every round, B = 16, one epoch: each makes
    ceil(360/16) = ceil(359/16) = 23 steps and sees its whole partition per round."""
    cfg = tiny_config(
        rounds=10,
        num_clients=4,
        clients_per_round=4,
        device="cpu",
        client={"batch_size": 16, "epochs": 1, "lr": 0.1},
        stop={"target_accuracy": 0.8},
    )
    inprocess.run(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    rounds = summary["rounds_to_target"]
    assert rounds is not None and 1 <= rounds < 10
    workload = build_workload(cfg)
    sizes = [len(p) for p in workload.partitions]
    assert {math.ceil(n / 16) for n in sizes} == {23}
    assert summary["steps_to_target"] == pytest.approx(23 * rounds)
    assert summary["examples_to_target"] == pytest.approx(rounds * sum(sizes) / 4)


def test_nothing_to_target_when_the_target_is_not_reached(tmp_path):
    cfg = tiny_config(rounds=1, device="cpu", stop={"target_accuracy": 0.999})
    inprocess.run(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds_to_target"] is None
    assert summary["steps_to_target"] is None and summary["examples_to_target"] is None


def test_work_a_deadline_dropped_does_not_count_toward_the_target(tmp_path):
    """Every client misses a 50 ms deadline: the model gets nothing, and no steps count."""
    device = {"name": "box", "step_overhead": 0.01, "throughput": 1000.0, "latency": 0.1}
    clock = {"name": "devices", "devices": [device], "policy": "deadline_drop", "deadline": 0.05}
    cfg = tiny_config(rounds=2, device="cpu", clock=clock)
    inprocess.run(cfg, tmp_path, progress=False)
    for row in read_rows(tmp_path)[1:]:
        assert row["clients_replied"] == 3 and row["clients_dropped"] == 3
        assert row["steps_per_client"] is None and row["examples_per_client"] is None


def _loss_of_flat_weights(model, x, y):
    """The loss as a function of every trainable weight in one flat vector."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in model.parameters() if p.requires_grad]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, [s.numel() for s in shapes])
        params = {n: v.reshape(s) for n, v, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])
    return loss, flat


def test_final_probe_measures_the_model_a_stop_ends_with(tmp_path):
    """logreg stopped at a train-loss target: only the stopping round's row carries the
    final probe, on that round's global weights and the pooled training sample. The top
    Hessian eigenvalue matches the exact Hessian's (all weights, eigvalsh); ε-sharpness
    lies between the loss gain at the box corner along the gradient's signs (a point of
    the box) and a second-order bound over the whole box."""
    cfg = tiny_config(
        rounds=30,
        num_clients=2,
        clients_per_round=2,
        device="cpu",
        model={"name": "logreg"},
        client={"batch_size": 32, "lr": 0.05},
        monitor={
            "final": True,
            "probe_samples": 300,
            "sharpness_epsilon": 1e-2,
            "hessian_iterations": 300,
        },
        eval={"train_samples": 300},
        stop={"target_train_loss": 1.0},
    )
    workload, weights = _final_weights(cfg, tmp_path)
    rows = read_rows(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_because"] == "target_train_loss"
    stopped = summary["rounds_completed"]
    assert 1 <= stopped < 30 and len(rows) == stopped + 1
    assert [r["final_hessian_top"] is not None for r in rows] == [False] * stopped + [True]

    model = workload.initial_model()
    load_arrays(model, weights[-1])
    pooled = torch.from_numpy(np.sort(np.concatenate(workload.partitions)))
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "train-sample"))
    index = pooled[torch.randperm(len(pooled), generator=generator)[:300]]
    loss, flat = _loss_of_flat_weights(model, workload.x_train[index], workload.y_train[index])
    hessian = torch.autograd.functional.hessian(loss, flat.double().float())
    top = float(torch.linalg.eigvalsh(hessian.double())[-1])
    assert rows[-1]["final_hessian_top"] == pytest.approx(top, rel=1e-3)
    assert summary["final_hessian_top"] == rows[-1]["final_hessian_top"]

    base = float(loss(flat))
    gradient = torch.func.grad(loss)(flat)
    radius = 1e-2 * (flat.abs() + 1.0)
    corner = float(loss(flat + radius * gradient.sign())) - base
    # f(w+z) - f(w) <= |g|·r + ½ λ_max |r|² with λ_max ≤ 2·top on this small box (convex)
    bound = float((gradient.abs() * radius).sum()) + top * float(radius.pow(2).sum())
    sharpness = rows[-1]["final_sharpness"]
    assert 100 * corner / (1 + base) * 0.99 <= sharpness <= 100 * bound / (1 + base)
    assert summary["final_sharpness"] == sharpness
