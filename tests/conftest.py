"""Shared helpers: tiny, fast experiment configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedbatch.config import RunConfig, build_config

# Overrides that make `python -m fedbatch.simulate` a run of a second or two.
FAST = [
    "rounds=2",
    "client.epochs=1",
    "num_clients=4",
    "clients_per_round=2",
    "progress=off",
    "model.hidden=[16]",
]

# Fields measured in wall-clock time: the only ones allowed to differ between runs.
MEASURED = {"seconds", "elapsed_seconds"}


def tiny_raw(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "seed": 3,
        "rounds": 3,
        "num_clients": 6,
        "clients_per_round": 3,
        "progress": "off",
        "data": {"name": "digits", "test_fraction": 0.2},
        "partition": {"name": "iid"},
        "model": {"name": "mlp", "hidden": [32], "norm": "none"},
        "client": {"batch_size": 16, "epochs": 1, "optimizer": "sgd", "lr": 0.1},
        "strategy": {"name": "fedavg"},
        "engine": {"name": "inprocess"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = raw[key] | value
        else:
            raw[key] = value
    return raw


def tiny_config(**overrides: Any) -> RunConfig:
    return build_config(tiny_raw(**overrides))


def simulate(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m fedbatch.simulate ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "fedbatch.simulate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def without_measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


# What a simulation's server measures on the pooled training data, which a deployment's
# server does not hold (its gap comes from the clients' evaluation instead).
SERVER_DATA = {"global_train_loss", "global_train_accuracy", "generalization_gap"}


def without_server_data(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in SERVER_DATA} for row in rows]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
