"""Run outputs: `metrics.jsonl` (a row per round, flushed as written) and `summary.json`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, BinaryIO

from fedbatch.metrics.callbacks import (
    Callback,
    ConvergenceMonitor,
    ResumeError,
    RoundState,
    RunOutcome,
)


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def row_json(row: dict[str, Any]) -> str:
    """A metrics.jsonl row: one line of JSON, non-finite numbers as null."""
    return json.dumps({k: finite_or_none(v) for k, v in row.items()})


FINAL_PROBES = ("final_sharpness", "final_hessian_top")


class JsonlSink(Callback):
    """Appends each round's row to `metrics.jsonl` and flushes, so a crash loses no row.

    The file is created at the first row. Resumed from a checkpoint, it keeps the rows the
    checkpoint had seen and drops any written after it (they are played again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def on_round_end(self, state: RoundState) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")
        self._file.write(self.encode(state.row, first=self._file.tell() == 0))
        self._file.flush()

    def encode(self, row: dict[str, Any], *, first: bool) -> bytes:
        """The bytes a row adds to the file (`first`: the file is empty so far)."""
        return row_json(row).encode() + b"\n"

    def on_run_end(self, outcome: RunOutcome) -> None:
        if self._file is not None:
            self._file.close()

    def state_dict(self) -> dict[str, Any]:
        return {"bytes": 0 if self._file is None else self._file.tell()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        size = state["bytes"]
        held = self.path.stat().st_size if self.path.exists() else 0
        if held < size:
            raise ResumeError(
                f"{self.path} holds {held} bytes, fewer than the {size} its checkpoint saw: "
                "not the run the checkpoint belongs to"
            )
        if self._file is not None:
            self._file.close()
        self._file = self.path.open("r+b")
        self._file.truncate(size)
        self._file.seek(size)


TOTALS = ("clients_failed", "clients_rejected")  # summed over the run's rows


class SummaryFile(Callback):
    """Writes `summary.json` (unless `path` is None): final and best metrics, why and when
    the run stopped."""

    def __init__(self, path: Path | None, monitor: ConvergenceMonitor) -> None:
        self.path = path
        self.monitor = monitor
        self.last_row: dict[str, Any] = {}
        self.first_error: str | None = None
        self.totals = dict.fromkeys(TOTALS, 0)  # replies lost over the run
        self.summary: dict[str, Any] = {}

    def on_round_end(self, state: RoundState) -> None:
        self.last_row = state.row
        self.first_error = self.first_error or state.row.get("client_error")
        for key in TOTALS:
            self.totals[key] += state.row.get(key) or 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_row": dict(self.last_row),
            "first_error": self.first_error,
            "totals": dict(self.totals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_row, self.first_error = state["last_row"], state["first_error"]
        self.totals = dict(state["totals"])

    def on_run_end(self, outcome: RunOutcome) -> None:
        last, monitor = self.last_row, self.monitor
        self.summary = {
            "test_accuracy": finite_or_none(last.get("test_accuracy")),
            "test_loss": finite_or_none(last.get("test_loss")),
            "train_loss": finite_or_none(last.get("train_loss")),
            "global_train_loss": finite_or_none(last.get("global_train_loss")),
            "generalization_gap": finite_or_none(last.get("generalization_gap")),
            "best_test_accuracy": finite_or_none(monitor.best_accuracy),
            "best_round": monitor.best_round,
            "best_test_loss": finite_or_none(monitor.best_loss),
            "rounds_completed": outcome.rounds_completed,
            "rounds_trained": monitor.rounds_trained,
            "rounds_to_target": monitor.rounds_to_target,
            "steps_to_target": monitor.steps_to_target,
            "examples_to_target": monitor.examples_to_target,
            "virtual_seconds_to_target": monitor.virtual_seconds_to_target,
            "virtual_seconds": finite_or_none(last.get("virtual_seconds")),
            "noise_scale_global": finite_or_none(last.get("noise_scale_global")),
            "noise_scale_local": finite_or_none(last.get("noise_scale_local")),
            "stopped_because": outcome.stopped_because,
            "client_error": self.first_error,
            **{f"{key}_total": count for key, count in self.totals.items()},
            "seconds": outcome.seconds,
        }
        for key in FINAL_PROBES:  # only when the run probed its final model
            if last.get(key) is not None:
                self.summary[key] = finite_or_none(last[key])
        if self.path is not None:
            write_summary(self.path, self.summary)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


ROW_LINE = "fedbatch:row "  # a metrics.jsonl row in a deployment's ServerApp log
SUMMARY_LINE = "fedbatch:summary "


class LineSink(Callback):
    """Prints each row, then the summary, as one line each on stdout: under `flwr run`
    the ServerApp's output streams back to the machine that submitted the run, which
    writes them into its own run directory (engine/deployment.py)."""

    def __init__(self, summary: SummaryFile) -> None:
        self.summary = summary

    def on_round_end(self, state: RoundState) -> None:
        _print_line(ROW_LINE + row_json(state.row))

    def on_run_end(self, outcome: RunOutcome) -> None:
        _print_line(SUMMARY_LINE + json.dumps(self.summary.summary))


def _print_line(line: str) -> None:
    """One write per line: Flower's log capture must not see it in pieces."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
