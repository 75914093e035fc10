"""The server loop on real Flower strategies and ClientApps, through both engines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from flwr.clientapp import ClientApp

from fedbatch.config import STRATEGIES
from fedbatch.engine import run_engine
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.client_app import app as real_client_app
from fedbatch.federated.server_app import run_experiment
from fedbatch.federated.strategies import ASYNC_PARAMETERS
from tests.conftest import read_rows, tiny_config, without_measured


def test_rows_have_the_documented_fields_and_counts(tmp_path):
    cfg = tiny_config()
    summary = run_engine(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["train_loss"] is None and rows[0]["test_accuracy"] is not None
    for row in rows[1:]:
        assert row["clients_sampled"] == row["clients_replied"] == 3
        assert row["clients_failed"] == 0
        # iid partitions of 1,437 training samples over 6 clients: 239 or 240 each
        assert 3 * 239 <= row["examples"] <= 3 * 240
        assert row["examples_seen"] == row["examples"]  # one epoch
        assert row["steps"] == 3 * 15  # ceil(240 / 16) batches per client
        assert row["grad_norm_max"] >= row["grad_norm_mean"] > 0
        assert row["seconds"] > 0
    assert summary["rounds_completed"] == 3 and summary["stopped_because"] == "rounds"
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert rows[-1]["test_accuracy"] > 0.5  # well above chance (0.1) after 3 rounds


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = tiny_config(rounds=2)
    run_engine(cfg, tmp_path / "a", progress=False)
    run_engine(cfg, tmp_path / "b", progress=False)
    rows_a, rows_b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    assert without_measured(rows_a) == without_measured(rows_b)
    other = tiny_config(rounds=2, seed=4)
    run_engine(other, tmp_path / "c", progress=False)
    assert without_measured(read_rows(tmp_path / "c")) != without_measured(rows_a)


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_trains(tmp_path, name):
    params = {"eta": 0.03} if name in ("fedadam", "fedyogi", "fedadagrad") else {}
    # Asynchronous strategies order updates by virtual time, and aggregate fewer per row.
    timed = {"clock": {"name": "devices"}, "rounds": 8} if name in ASYNC_PARAMETERS else {}
    cfg = tiny_config(strategy={"name": name, **params}, **timed)
    run_engine(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    assert rows[-1]["test_loss"] < rows[0]["test_loss"]
    assert rows[-1]["test_accuracy"] > 0.3


def test_client_evaluation_reports_global_model_on_local_data(tmp_path):
    cfg = tiny_config(strategy={"name": "fedavg", "fraction_evaluate": 0.5})
    run_engine(cfg, tmp_path, progress=False)
    row = read_rows(tmp_path)[-1]
    assert 0.0 < row["client_eval_accuracy"] <= 1.0
    assert row["client_eval_loss"] > 0


def test_a_failing_client_is_counted_not_fatal(tmp_path):
    broken = ClientApp()

    @broken.train()
    def _train(msg, context):
        if msg.content["config"]["partition-id"] == 0:
            raise RuntimeError("device unplugged")
        return real_client_app(msg, context)

    cfg = tiny_config(clients_per_round=6, rounds=2)
    run_experiment(InProcessGrid(6, broken), cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    assert [r["clients_failed"] for r in rows[1:]] == [1, 1]
    assert [r["clients_replied"] for r in rows[1:]] == [5, 5]
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]


def test_stops_at_target_accuracy(tmp_path):
    cfg = tiny_config(rounds=30, stop={"target_accuracy": 0.5})
    summary = run_engine(cfg, tmp_path, progress=False)
    rows = read_rows(tmp_path)
    assert summary["stopped_because"] == "target_accuracy"
    assert summary["rounds_completed"] == summary["rounds_to_target"] == len(rows) - 1 < 30
    assert rows[-1]["test_accuracy"] >= 0.5
    assert all(r["test_accuracy"] < 0.5 for r in rows[1:-1])


def test_stops_after_patience_without_improvement(tmp_path):
    # A learning rate this small changes nothing: accuracy is flat from round 1.
    cfg = tiny_config(rounds=30, client={"lr": 1e-9}, stop={"patience": 2})
    summary = run_engine(cfg, tmp_path, progress=False)
    assert summary["stopped_because"] == "patience"
    assert summary["rounds_completed"] == 2


# Client state that must survive between a client's rounds (Flower's context.state): an
# online stream's consumed/buffered samples, FedBN's local BatchNorm layers and a kept
# optimizer state (momentum buffers).
STATEFUL = {
    "stream": {"name": "poisson", "rate": 4.0, "passes": 1, "buffer": "reservoir",
               "capacity": 30, "replay_ratio": 0.25},
    "model": {"norm": "batch", "fedbn": True},
    "client": {"batch_size": 8, "optimizer": "momentum", "optimizer_state": "keep"},
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, STATEFUL], ids=["default", "stateful"])
def test_ray_engine_matches_inprocess(tmp_path, extra):
    rounds = 2 if not extra else 4
    raw_engine = {"name": "ray", "num_cpus": 1}
    # Four clients a round: a sum of three or more floats depends on its order, which
    # Ray's replies arrive in at random (the loop sorts them).
    shape = {"rounds": rounds, "num_clients": 5, "clients_per_round": 4}
    cfg_ray = tiny_config(**shape, engine=raw_engine, **extra)
    cfg_local = tiny_config(**shape, **extra)
    run_engine(cfg_ray, tmp_path / "ray", progress=False)
    run_engine(cfg_local, tmp_path / "local", progress=False)
    ray_rows = without_measured(read_rows(tmp_path / "ray"))
    local_rows = without_measured(read_rows(tmp_path / "local"))
    assert len(local_rows) == rounds + 1
    # One torch thread per client process on both engines: bit-identical numbers.
    assert ray_rows == local_rows


def test_torch_one_off_imports_are_paid_when_the_workload_is_built():
    """Torch imports its compiler stack (about a second) at the first optimizer: building
    the workload pays it, so the first round's measured time is training, not imports."""
    code = (
        "import sys\n"
        "from fedbatch.federated.workload import build_workload\n"
        "from tests.conftest import tiny_config\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "build_workload(tiny_config())\n"
        "print(before, 'torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.split()
    if before == "True":
        pytest.skip("this torch imports its compiler stack with torch itself")
    assert after == "True"
