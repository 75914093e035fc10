"""Shared helpers: tiny, fast experiment configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedbatch.config import RunConfig, build_config

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


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def without_measured(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
