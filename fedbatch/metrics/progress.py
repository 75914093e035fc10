"""Progress: a rich bar on a terminal (round, loss, accuracy, elapsed time); elsewhere
(nohup, SLURM, a pipe) one plain line per round, which a log file keeps readably."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedbatch.metrics.callbacks import Callback, RoundState, RunOutcome


def _fmt(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else "-"


class RichProgress(Callback):
    def __init__(self, rounds: int, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console or Console(stderr=True),
        )
        self.task = self.progress.add_task("rounds", total=rounds, status="")
        self.progress.start()

    def on_round_end(self, state: RoundState) -> None:
        row = state.row
        status = (
            f"train loss {_fmt(row.get('train_loss'))}  test loss {_fmt(row.get('test_loss'))}"
            f"  test acc {_fmt(row.get('test_accuracy'))}"
        )
        self.progress.update(self.task, completed=state.round, status=status)

    def on_run_end(self, outcome: RunOutcome) -> None:
        self.progress.stop()


class RoundLines(Callback):
    """One short line per round on stderr: round, test accuracy and loss, elapsed time."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds

    def on_round_end(self, state: RoundState) -> None:
        row = state.row
        elapsed = row.get("elapsed_seconds")  # none at round 0, before any training
        line = (
            f"round {state.round}/{self.rounds}  test acc {_fmt(row.get('test_accuracy'))}"
            f"  test loss {_fmt(row.get('test_loss'))}"
        )
        if isinstance(elapsed, float):
            line += f"  {elapsed:.1f} s"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def progress_display(rounds: int, setting: str) -> Callback:
    """The bar on a terminal (always with progress=on), plain lines elsewhere."""
    if setting == "on" or sys.stderr.isatty():
        return RichProgress(rounds)
    return RoundLines(rounds)
