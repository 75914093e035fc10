"""Short runs from the user's own files, as README's "Your own data and model" shows them:
each format trains through the in-process engine, and a natural partition gives one
client per writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedbatch.config.compose import compose_raw
from fedbatch.engine import run_engine
from fedbatch.federated.workload import workload_for
from fedbatch.simulate import validate
from tests.conftest import read_rows
from tests.own_data import TABLE_FORMATS, WRITERS, table, write_images, write_table

pytestmark = pytest.mark.slow
SHORT = ["rounds=2", "num_clients=3", "clients_per_round=2", "progress=off"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _run(overrides: list[str], out: Path) -> dict:
    cfg = validate(compose_raw(overrides))
    summary = run_engine(cfg, out, progress=False)
    assert summary["rounds_completed"] == 2 and summary["clients_failed_total"] == 0
    assert [row["round"] for row in read_rows(out)] == [0, 1, 2]
    return summary


def _arrays_file(directory: Path, suffix: str) -> Path:
    columns = table()
    arrays = {"x": np.stack([columns["a"], columns["b"]], axis=1), "y": columns["kind"] == "yes"}
    path = directory / f"mine{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    return path


@pytest.mark.parametrize("form", TABLE_FORMATS)
def test_a_table_trains(tmp_path: Path, form: str) -> None:
    path = write_table(tmp_path, form, table())
    data = ["data=hf", f"data.path={path}", "data.label=kind", "data.features=[a,b]"]
    _run([*data, "model.hidden=[8]", *SHORT], tmp_path / "run")


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_arrays_train(tmp_path: Path, suffix: str) -> None:
    _run(["data=arrays", f"data.path={_arrays_file(tmp_path, suffix)}", *SHORT], tmp_path / "run")


def test_an_image_folder_trains_a_cnn(tmp_path: Path) -> None:
    write_images(tmp_path / "images")
    data = ["data=hf", f"data.path={tmp_path / 'images'}", "data.normalize=true"]
    model = ["model=cnn", "model.channels=[4]", "model.kernel_size=3"]
    _run([*data, *model, *SHORT], tmp_path / "run")


def test_a_natural_partition_gives_one_client_per_writer(tmp_path: Path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        write_table(tmp_path, "parquet", table(seed=seed)).rename(tmp_path / f"{split}.parquet")
    overrides = [
        "data=hf", f"data.path={tmp_path}", "data.label=kind", "data.features=[a,b]",
        "data.test_split=test", "partition=natural", "partition.by=writer",
        *[o for o in SHORT if not o.startswith("num_clients")],
    ]  # fmt: skip
    _run(overrides, tmp_path / "run")
    cfg = validate(compose_raw(overrides))
    assert cfg.num_clients == WRITERS
    writers = table(seed=0)["writer"]
    expected = [np.flatnonzero(writers == w) for w in np.unique(writers)]  # sorted ids
    partitions = workload_for(cfg.to_json()).partitions
    assert [p.tolist() for p in partitions] == [e.tolist() for e in expected]
