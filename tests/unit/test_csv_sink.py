"""`metrics.csv` (logger=csv): one header with every column, whatever round a column first
appears in; null and NaN as empty cells; a resume replaces the rounds played again."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd
import pytest

from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated.server_app import run_experiment
from fedbatch.metrics.callbacks import RoundState
from fedbatch.metrics.trackers import CsvSink
from tests.conftest import read_rows, tiny_config

# Per-layer grad norms appear from round 1 (round 0 trains nothing), a new one in round 2.
ROWS = [
    {"round": 0, "test_accuracy": 0.25, "train_loss": None},
    {"round": 1, "test_accuracy": 0.5, "train_loss": float("nan"), "grad_norm/fc.weight": 2.0},
    {"round": 2, "test_accuracy": 0.75, "train_loss": 1.5, "grad_norm/fc.weight": 1.0,
     "grad_norm/fc.bias": 0.5},
]  # fmt: skip
HEADER = ["round", "test_accuracy", "train_loss", "grad_norm/fc.weight", "grad_norm/fc.bias"]


def _write(sink: CsvSink, rows: list[dict]) -> None:
    for row in rows:
        sink.on_round_end(RoundState(round=row["round"], arrays=None, row=dict(row)))


def test_columns_that_appear_late_widen_the_one_header(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    _write(CsvSink(path), ROWS)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == HEADER and len(lines) == 4
    assert lines[1:] == ["0,0.25,,,", "1,0.5,,2.0,", "2,0.75,1.5,1.0,0.5"]  # null, NaN: empty
    table = pd.read_csv(path)
    assert table["round"].tolist() == [0, 1, 2]
    assert table["test_accuracy"].tolist() == [0.25, 0.5, 0.75]
    assert math.isnan(table["train_loss"][0]) and math.isnan(table["train_loss"][1])
    assert table["train_loss"][2] == 1.5
    assert math.isnan(table["grad_norm/fc.weight"][0])
    assert table["grad_norm/fc.weight"][1:].tolist() == [2.0, 1.0]
    assert table["grad_norm/fc.bias"].isna().tolist() == [True, True, False]


def test_rows_without_new_columns_are_appended_under_the_header(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    sink = CsvSink(path)
    _write(sink, ROWS)
    _write(sink, [{"round": 3, "test_accuracy": 1.0}])  # fewer keys: empty cells
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["round"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[3] == dict.fromkeys(HEADER, "") | {"round": "3", "test_accuracy": "1.0"}


def test_a_resume_keeps_the_checkpoints_rows_and_replaces_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    first = CsvSink(path)
    _write(first, ROWS[:2])
    state = first.state_dict()  # the checkpoint after round 1
    _write(first, [ROWS[2]])  # round 2 written, then the process dies
    resumed = CsvSink(path)
    resumed.load_state_dict(state)
    _write(resumed, [ROWS[2] | {"test_accuracy": 0.875}])  # round 2 played again
    table = pd.read_csv(path)
    assert table["round"].tolist() == [0, 1, 2]
    assert table["test_accuracy"].tolist() == [0.25, 0.5, 0.875]
    assert list(table.columns) == HEADER


@pytest.mark.slow
def test_a_run_with_per_layer_grad_norms_reads_back_every_round(tmp_path: Path) -> None:
    cfg = tiny_config(rounds=2, logger={"csv": True}, monitor={"grad_norm": 1, "layer_norms": True})
    run_experiment(InProcessGrid(6), cfg, tmp_path, progress=False)
    table = pd.read_csv(tmp_path / "metrics.csv")  # the review's failure: a ragged table
    rows = read_rows(tmp_path)
    layers = sorted({k for row in rows for k in row if k.startswith("grad_norm/")})
    assert layers and set(layers) <= set(table.columns)
    assert table["round"].tolist() == [0, 1, 2]
    for column in table.columns:  # every round's value, an empty cell where jsonl has null
        for written, row in zip(table[column], rows, strict=True):
            value = row.get(column)
            if value is None:
                assert pd.isna(written), column
            elif isinstance(value, float | int) and not isinstance(value, bool):
                assert written == pytest.approx(value, rel=1e-12), column
            else:
                assert str(written) == str(value), column
