"""Experiment trackers (`logger=[tensorboard,mlflow,csv]`): read back with each tool's own
reader, they hold every round of metrics.jsonl, once, also after a crash and a resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from flwr.clientapp import ClientApp

from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.checkpoint import load_checkpoint
from fedbatch.federated.client_app import app as real_client_app
from fedbatch.federated.server_app import run_experiment
from fedbatch.run_dir import CHECKPOINT
from tests.conftest import FAST, read_rows, simulate, tiny_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

ALL = {"tensorboard": True, "mlflow": True, "csv": True}


def tensorboard_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def tensorboard_hparams(run_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return HParamsPluginData.FromString(content).session_start_info.hparams


def mlflow_run(run_dir: Path) -> tuple[Any, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedbatch")
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def accuracies(run_dir: Path) -> list[tuple[int, float]]:
    """metrics.jsonl's test accuracy of each round: what every tracker must hold."""
    return [(row["round"], row["test_accuracy"]) for row in read_rows(run_dir)]


@pytest.mark.slow
def test_every_tracker_at_once_holds_every_round_the_config_and_the_summary(tmp_path):
    cfg = tiny_config(rounds=3, logger=ALL)
    run_experiment(InProcessGrid(6), cfg, tmp_path, progress=False)
    expected = accuracies(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r for r, _ in expected] == [0, 1, 2, 3]

    # TensorBoard: a scalar per round (float32), the config as hyperparameters, the summary
    scalars = tensorboard_scalars(tmp_path, "test_accuracy")
    assert [step for step, _ in scalars] == [0, 1, 2, 3]
    assert [value for _, value in scalars] == pytest.approx([a for _, a in expected], rel=1e-6)
    final = tensorboard_scalars(tmp_path, "summary/best_test_accuracy")
    assert final == [(3, pytest.approx(max(a for _, a in expected), rel=1e-6))]
    hparams = tensorboard_hparams(tmp_path)
    assert hparams["client.lr"].number_value == pytest.approx(0.1)
    assert hparams["strategy.name"].string_value == "fedavg"

    # MLflow: params, the metric history, the summary and the final model as an artifact
    client, run = mlflow_run(tmp_path)
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted((m.step, m.value) for m in history) == expected
    assert run.data.params["client.batch_size"] == "16"
    assert run.data.params["model.hidden"] == "[32]"
    assert run.data.metrics["summary.test_accuracy"] == summary["test_accuracy"]
    assert run.data.tags["stopped_because"] == "rounds"
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    paths = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "summary.json"} <= paths
    copy = client.download_artifacts(run.info.run_id, "model.safetensors", str(tmp_path / "dl"))
    assert Path(copy).read_bytes() == (tmp_path / "model.safetensors").read_bytes()

    # CSV: every round, a column per key, an empty cell for null
    table = csv_rows(tmp_path)
    assert [(int(r["round"]), float(r["test_accuracy"])) for r in table] == expected
    assert table[0]["train_loss"] == ""  # round 0 trains nothing
    assert list(table[0]) == list(read_rows(tmp_path)[0])


def _stopping_in_round(stop_round: int, stop: BaseException) -> ClientApp:
    """A client app that raises `stop` during `stop_round`."""
    stopping = ClientApp()

    @stopping.train()
    def _train(msg, context):
        if msg.content["config"]["server-round"] == stop_round:
            raise stop
        return real_client_app(msg, context)

    return stopping


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "checkpoint_round", "status"),
    [
        # a power cut: no handler runs, the checkpoint of round 2 stays, round 3 is replayed
        (SystemExit("power cut"), 2, "RUNNING"),
        # Ctrl-C: the run ends as interrupted after round 3, checkpointed there
        (KeyboardInterrupt(), 3, "KILLED"),
    ],
    ids=["power_cut", "ctrl_c"],
)
def test_a_resumed_run_continues_its_trackers_with_each_round_once(
    stop, checkpoint_round, status, tmp_path
):
    cfg = tiny_config(rounds=5, save={"every": 2}, logger=ALL)
    with pytest.raises(type(stop)):
        grid = InProcessGrid(6, _stopping_in_round(4, stop))
        run_experiment(grid, cfg, tmp_path, progress=False)
    assert len(csv_rows(tmp_path)) == 4  # rounds 0-3
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["round"] == checkpoint_round
    assert mlflow_run(tmp_path)[1].info.status == status

    run_experiment(InProcessGrid(6), cfg, tmp_path, progress=False, resume=state)
    expected = accuracies(tmp_path)
    assert [r for r, _ in expected] == [0, 1, 2, 3, 4, 5]
    scalars = tensorboard_scalars(tmp_path, "test_accuracy")  # round 3's first try purged
    assert [step for step, _ in scalars] == [0, 1, 2, 3, 4, 5]
    assert [value for _, value in scalars] == pytest.approx([a for _, a in expected], rel=1e-6)
    client, run = mlflow_run(tmp_path)  # one run, continued
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted((m.step, m.value) for m in history) == expected
    assert run.info.status == "FINISHED"
    table = csv_rows(tmp_path)
    assert [(int(r["round"]), float(r["test_accuracy"])) for r in table] == expected


@pytest.mark.slow
def test_off_a_terminal_progress_is_one_plain_line_per_round(tmp_path):
    args = [a for a in FAST if not a.startswith("progress=")]
    done = simulate(*args, "hydra.run.dir=run", cwd=tmp_path)  # stderr: a pipe, as in nohup
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    rows = read_rows(tmp_path / "run")
    assert len(lines) == len(rows) == 3
    for line, row in zip(lines, rows, strict=True):
        expected = (
            f"round {row['round']}/2  test acc {row['test_accuracy']:.4f}"
            f"  test loss {row['test_loss']:.4f}"
        )
        if row["round"] > 0:  # round 0 is the initial model: no time has passed
            expected += f"  {row['elapsed_seconds']:.1f} s"
        assert line == expected
