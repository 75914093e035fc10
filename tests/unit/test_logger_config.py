"""The `logger` config group: several trackers at once, bad names and missing packages as
one line; a deployment's trackers run where its rows arrive."""

from __future__ import annotations

import csv
import json

import pytest

from fedbatch.config import ConfigError
from fedbatch.config.compose import OverrideError, compose_config
from fedbatch.config.logger import LoggerConfig
from fedbatch.engine.deployment import RunDirectory
from fedbatch.metrics import trackers
from fedbatch.metrics.callbacks import Callback, RunOutcome
from fedbatch.metrics.sink import ROW_LINE, SUMMARY_LINE
from fedbatch.simulate import validate
from tests.conftest import tiny_raw


@pytest.mark.parametrize(
    ("overrides", "chosen"),
    [
        ([], ()),
        (["logger=csv"], ("csv",)),
        (["logger=[tensorboard,mlflow]"], ("tensorboard", "mlflow")),
        (["logger=[csv,tensorboard,mlflow]"], ("tensorboard", "mlflow", "csv")),
        (["logger.csv=true"], ("csv",)),  # the keys themselves, without the group
    ],
)
def test_the_logger_group_chooses_several_trackers_at_once(overrides, chosen):
    assert compose_config(overrides).logger.chosen == chosen


def test_mlflow_settings_compose_with_the_group():
    logger = compose_config(
        ["logger=mlflow", "logger.mlflow_uri=http://tracking:5000", "logger.mlflow_experiment=b"]
    ).logger
    assert (logger.mlflow_uri, logger.mlflow_experiment) == ("http://tracking:5000", "b")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["logger=[tensorboard,wandb]"], "logger='wandb' is invalid: allowed one of csv, mlflow,"),
        (["logger.wandb=true"], "logger.wandb is not a key of logger: allowed csv, mlflow,"),
        (["logger=csv", "logger.uri=x"], "logger.uri is not a key of logger=csv: allowed csv,"),
    ],
)
def test_a_bad_tracker_is_one_line(overrides, error):
    with pytest.raises(OverrideError) as info:
        compose_config(overrides)
    assert str(info.value).startswith(error) and "\n" not in str(info.value)


def test_a_chosen_tracker_that_is_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(trackers.MODULES, "mlflow", "fedbatch_no_such_module")
    with pytest.raises(ConfigError) as info:
        validate(tiny_raw(logger={"mlflow": True}))
    assert str(info.value) == (
        "logger='mlflow' is invalid: allowed a tracker that is installed "
        "(fedbatch_no_such_module is not: pip install 'fedbatch[track]')"
    )


def test_a_deployment_writes_its_trackers_from_the_streamed_rows(tmp_path):
    rows = [
        {"round": 0, "test_accuracy": 0.25, "train_loss": None},
        {"round": 1, "test_accuracy": 0.5, "train_loss": 1.5},
    ]
    run_dir = RunDirectory(tmp_path, rounds=1)
    run_dir.callbacks = trackers.trackers_for(LoggerConfig(csv=True), tmp_path, {}, run_dir)
    for row in rows:
        run_dir.take(ROW_LINE + json.dumps(row))
    summary = {"rounds_completed": 1, "stopped_because": "rounds", "seconds": 1.0}
    run_dir.take(SUMMARY_LINE + json.dumps(summary))
    run_dir.close()
    with (tmp_path / "metrics.csv").open(newline="") as file:
        table = list(csv.reader(file))
    assert table == [
        ["round", "test_accuracy", "train_loss"],
        ["0", "0.25", ""],
        ["1", "0.5", "1.5"],
    ]


class Outcomes(Callback):
    def __init__(self) -> None:
        self.ended: list[RunOutcome] = []

    def on_run_end(self, outcome: RunOutcome) -> None:
        self.ended.append(outcome)


@pytest.mark.parametrize("ended", ["interrupted", "lost"])
def test_a_deployment_s_trackers_end_even_when_no_summary_comes_back(tmp_path, ended):
    run_dir = RunDirectory(tmp_path, rounds=5)
    outcomes = Outcomes()
    run_dir.callbacks = [outcomes]
    run_dir.take(ROW_LINE + json.dumps({"round": 0, "test_accuracy": 0.1}))
    run_dir.take(ROW_LINE + json.dumps({"round": 1, "test_accuracy": 0.2}))
    run_dir.close(ended)
    assert outcomes.ended == [RunOutcome(1, ended, 0.0)]
