"""Experiment trackers: each round's row, the config and the summary where the field's
tools read them: TensorBoard event files, an MLflow run, a CSV table.

TensorBoard and MLflow are the optional extra `fedbatch[track]`, imported only by a run
that chose them (`logger=[tensorboard,mlflow]`), so start-up stays fast. A resumed run
continues its trackers: the same MLflow run, TensorBoard steps after the checkpoint's
(the rounds played again replace those written before the interruption).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from fedbatch.checks import ConfigError
from fedbatch.config.logger import TRACK_EXTRA, LoggerConfig
from fedbatch.metrics.callbacks import Callback, ResumeError, RoundState, RunOutcome
from fedbatch.metrics.endings import INTERRUPTED, LOST
from fedbatch.metrics.sink import finite_or_none

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

CSV_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
RUN_FILES = ("model.safetensors", "summary.json", "config.yaml")  # MLflow artifacts
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # what each tracker imports


class HasSummary(Protocol):
    """What holds the run's summary once it ends (SummaryFile; a deployment's rows)."""

    summary: Any


def check_installed(logger: LoggerConfig) -> None:
    """A chosen tracker whose package is not installed: a ConfigError naming the extra."""
    for name in logger.chosen:
        module = MODULES.get(name)
        if module is not None and importlib.util.find_spec(module) is None:
            allowed = f"a tracker that is installed ({module} is not: {TRACK_EXTRA})"
            raise ConfigError("logger", name, allowed)


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """A row's finite numbers (not its round, which is the step): what trackers plot."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "round"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def flat_config(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`client.lr`-style keys with scalar values (lists and null as JSON text)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flat_config(value, f"{name}.")
        elif isinstance(value, bool | int | float | str):
            yield name, value
        else:
            yield name, json.dumps(value)


class CsvSink(Callback):
    """`metrics.csv`: the rows of metrics.jsonl as a table under one header that holds
    every column seen so far (empty cells for null and NaN). A row with a new column
    (per-layer grad norms first appear in round 1) rewrites the file, atomically, under
    the wider header; any other row is appended. Resumed from a checkpoint, it keeps the
    rows the checkpoint had seen (the later ones are played again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []

    def on_round_end(self, state: RoundState) -> None:
        row = {key: finite_or_none(value) for key, value in state.row.items()}
        self.rows.append(row)
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="", encoding="utf-8") as file:
                self._writer(file).writerow(row)

    def _writer(self, file: IO[str]) -> csv.DictWriter[str]:
        return csv.DictWriter(file, self.columns, restval="", lineterminator="\n")

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        with partial.open("w", newline="", encoding="utf-8") as file:
            writer = self._writer(file)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(partial, self.path)  # a reader never sees half a table

    def state_dict(self) -> dict[str, Any]:
        return {"rows": len(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        held = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if "bytes" in state:  # a checkpoint of the appending table: its rows up to there
            held = held.encode()[: state["bytes"]].decode()
        reader = csv.DictReader(io.StringIO(held))
        rows = list(reader)
        count = state.get("rows", len(rows))
        if len(rows) < count:
            raise ResumeError(
                f"{self.path} holds {len(rows)} rows, fewer than the {count} its checkpoint "
                "saw: not the run the checkpoint belongs to"
            )
        self.columns, self.rows = list(reader.fieldnames or []), rows[:count]
        if self.rows:
            self._rewrite()
        else:
            self.columns = []
            self.path.unlink(missing_ok=True)


class TensorBoardTracker(Callback):
    """Event files in `log_dir`: every number of each row (step: the round), the config
    as hyperparameters and the summary (`summary/<key>`) at the end."""

    def __init__(self, log_dir: Path, config: Mapping[str, Any], summary: HasSummary) -> None:
        import torch.utils.tensorboard  # noqa: F401  (before the run's clock starts)

        self.log_dir, self.config, self.summary = log_dir, config, summary
        self.writer: SummaryWriter | None = None
        self.last_round: int | None = None
        self.purge_from: int | None = None  # resumed: rounds from here are played again

    def _open(self) -> SummaryWriter:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_from)
        return self.writer

    def on_round_end(self, state: RoundState) -> None:
        writer = self._open()
        for key, value in numbers(state.row).items():
            writer.add_scalar(key, value, global_step=state.round)
        writer.flush()
        self.last_round = state.round

    def on_run_end(self, outcome: RunOutcome) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._open()
        final = {f"summary/{k}": v for k, v in numbers(self.summary.summary or {}).items()}
        for key, value in final.items():
            writer.add_scalar(key, value, global_step=outcome.rounds_completed)
        for part in hparams(dict(flat_config(self.config)), final):
            writer.file_writer.add_summary(part)  # in this run's directory, not a new one
        writer.add_text("summary", json.dumps(self.summary.summary, indent=2), 0)
        writer.close()
        self.writer = None

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.last_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("round") is not None:
            self.last_round = state["round"]
            self.purge_from = state["round"] + 1
        if self.writer is not None:  # interrupted: the next writer purges what follows
            self.writer.close()
            self.writer = None


class MlflowTracker(Callback):
    """An MLflow run: the config as params, every number of each row as metrics (step:
    the round), the summary (`summary.<key>`, `stopped_because` as a tag) and the run's
    final model, summary.json and config.yaml as artifacts."""

    def __init__(
        self,
        run_dir: Path,
        logger: LoggerConfig,
        config: Mapping[str, Any],
        summary: HasSummary,
    ) -> None:
        self.run_dir, self.config, self.summary = run_dir, config, summary
        self.uri = logger.mlflow_uri or f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"
        self.own_store = logger.mlflow_uri is None  # artifacts beside the run's database
        self.experiment = logger.mlflow_experiment
        self.client = self._connect()
        self.run_id: str | None = None
        self.started = False
        self.logged_through = -1  # resumed: rounds up to here are in the run already

    def _connect(self) -> MlflowClient:
        """Before the run's clock starts: a new database takes seconds to set up."""
        import logging

        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its DB set-up, at INFO
        client = MlflowClient(tracking_uri=self.uri)
        client.get_experiment_by_name(self.experiment)
        return client

    def _start(self) -> tuple[MlflowClient, str]:
        client = self.client
        if not self.started:
            if self.run_id is None:
                self.run_id = self._create_run(client)
            else:
                client.update_run(self.run_id, status="RUNNING")
                self.logged_through = self._last_step(client, self.run_id)
            self.started = True
        assert self.run_id is not None
        return client, self.run_id

    def _create_run(self, client: MlflowClient) -> str:
        from mlflow.entities import Param

        found = client.get_experiment_by_name(self.experiment)
        artifacts = (self.run_dir / MLFLOW_ARTIFACTS).resolve().as_uri()
        experiment = (
            found.experiment_id
            if found is not None
            else client.create_experiment(
                self.experiment, artifact_location=artifacts if self.own_store else None
            )
        )
        where = self.run_dir.resolve()
        name = f"{where.parent.name}/{where.name}"  # `2026-12-04/17-48-01`, a sweep's `bs/0`
        run = client.create_run(experiment, run_name=name, tags={"fedbatch.run_dir": str(where)})
        run_id: str = run.info.run_id
        params = [Param(k, str(v)) for k, v in flat_config(self.config)]
        for start in range(0, len(params), 100):  # MLflow takes 100 params a batch
            client.log_batch(run_id, params=params[start : start + 100])
        return run_id

    @staticmethod
    def _last_step(client: MlflowClient, run_id: str) -> int:
        keys = client.get_run(run_id).data.metrics
        steps = [m.step for key in keys for m in client.get_metric_history(run_id, key)]
        return max(steps, default=-1)

    def on_round_end(self, state: RoundState) -> None:
        client, run_id = self._start()
        if state.round <= self.logged_through:
            return  # played again after a resume: logged before the interruption
        self._log(client, run_id, numbers(state.row), state.round)

    @staticmethod
    def _log(client: MlflowClient, run_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes 1000 metrics a batch
            client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def on_run_end(self, outcome: RunOutcome) -> None:
        client, run_id = self._start()
        final = {f"summary.{k}": v for k, v in numbers(self.summary.summary or {}).items()}
        self._log(client, run_id, final, outcome.rounds_completed)
        client.set_tag(run_id, "stopped_because", outcome.stopped_because)
        for name in RUN_FILES:
            if (self.run_dir / name).is_file():
                client.log_artifact(run_id, str(self.run_dir / name))
        status = {INTERRUPTED: "KILLED", LOST: "FAILED"}.get(outcome.stopped_because, "FINISHED")
        client.set_terminated(run_id, status)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id


def trackers_for(
    logger: LoggerConfig, run_dir: Path, config: Mapping[str, Any], summary: HasSummary
) -> list[Callback]:
    """The chosen trackers, writing into `run_dir`; last among the callbacks, after the
    summary and the final model they report."""
    chosen: list[Callback] = []
    if logger.csv:
        chosen.append(CsvSink(run_dir / CSV_FILE))
    if logger.tensorboard:
        chosen.append(TensorBoardTracker(run_dir / TENSORBOARD_DIR, config, summary))
    if logger.mlflow:
        chosen.append(MlflowTracker(run_dir, logger, config, summary))
    return chosen
