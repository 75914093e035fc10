"""The user's own data refused in one line where it would otherwise mislead: missing labels
or feature values, a split without a column, a model that cannot take the samples, a
mistyped directory tried as a Hub id."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedbatch.config import ConfigError, DataConfig, RunConfig, build_config
from fedbatch.config.compose import compose_raw
from fedbatch.config.run import check_model_input
from fedbatch.data.datasets import load_dataset
from fedbatch.data.hub import open_splits
from tests.conftest import simulate


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _frame(rows: int = 10) -> pd.DataFrame:
    """Features a, b and label kind: 'no' for even rows, 'yes' for odd."""
    a = np.arange(rows, dtype=float)
    return pd.DataFrame({"a": a, "b": -a, "kind": np.where(a % 2 == 0, "no", "yes")})


def _load(path: Path, **data: object) -> None:
    load_dataset(DataConfig(name="hf", path=str(path), label="kind", **data), 0)  # type: ignore[arg-type]


def _refusal(path: Path, **data: object) -> str:
    with pytest.raises(ConfigError) as info:
        _load(path, **data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- missing labels and feature values ---------------------------------------------------


def test_null_labels_are_refused_with_their_count_and_split(tmp_path: Path) -> None:
    frame = _frame()
    frame["kind"] = frame["kind"].astype(object)
    frame.loc[[2, 5], "kind"] = None  # two nulls: they would have become a class "None"
    frame.to_parquet(tmp_path / "data.parquet")
    message = _refusal(tmp_path / "data.parquet")
    assert message.startswith("data.label='kind' is invalid")
    assert "column 'kind' has 2 missing values in split train" in message


def test_a_test_split_without_the_label_column_is_refused(tmp_path: Path) -> None:
    _frame().to_parquet(tmp_path / "train.parquet")
    _frame(4).drop(columns="kind").to_parquet(tmp_path / "test.parquet")
    message = _refusal(tmp_path, test_split="test")
    assert message.startswith("data.label='kind' is invalid")
    assert "the test split has no column 'kind'" in message


def test_a_feature_with_nulls_names_the_column_count_and_split(tmp_path: Path) -> None:
    _frame().to_parquet(tmp_path / "train.parquet")
    test = _frame(6)
    test.loc[[0, 3, 4], "a"] = np.nan  # three missing floats in the test split
    test.to_parquet(tmp_path / "test.parquet")
    message = _refusal(tmp_path, test_split="test")
    assert message.startswith("data.features='a' is invalid")
    assert "column 'a' has 3 missing values in split test" in message
    assert "holds object" not in message


def test_a_test_split_without_a_feature_column_is_refused(tmp_path: Path) -> None:
    _frame().to_parquet(tmp_path / "train.parquet")
    _frame(4).drop(columns="b").to_parquet(tmp_path / "test.parquet")
    message = _refusal(tmp_path, test_split="test", features=("a", "b"))
    assert message.startswith("data.features='b' is invalid")
    assert "the test split has no column 'b'" in message


def test_complete_splits_still_load_with_their_labels(tmp_path: Path) -> None:
    _frame().to_parquet(tmp_path / "train.parquet")
    _frame(4).to_parquet(tmp_path / "test.parquet")
    ds = load_dataset(DataConfig(name="hf", path=str(tmp_path), label="kind", test_split="test"), 0)
    assert ds.y_test.tolist() == [0, 1, 0, 1] and ds.class_values == ("no", "yes")
    np.testing.assert_array_equal(ds.x_test, [[0, 0], [1, -1], [2, -2], [3, -3]])


@pytest.mark.slow
def test_the_command_line_exits_2_with_one_line(tmp_path: Path) -> None:
    frame = _frame()
    frame["kind"] = frame["kind"].astype(object)
    frame.loc[[7], "kind"] = None
    frame.to_csv(tmp_path / "data.csv", index=False)
    result = simulate(
        "data=hf", f"data.path={tmp_path / 'data.csv'}", "data.label=kind", cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "data.label='kind'" in line and "1 missing values in split train" in line


# --- models that cannot take the samples ---------------------------------------------------


def _config(model: str) -> RunConfig:
    return build_config(compose_raw(["data=arrays", "data.path=mine.npz", f"model={model}"]))


@pytest.mark.parametrize(
    ("model", "shape", "fits"),
    [
        ("cnn1d", (28, 28), "one of logreg, mlp for"),  # a 2-D array per sample
        ("cnn1d", (3, 4, 4), "one of logreg, mlp, cnn, resnet for"),  # an image folder
        ("resnet", (28, 28), "one of logreg, mlp for"),  # neither flat nor an image
        ("cnn", (5,), "one of logreg, mlp, cnn1d for"),
    ],
)
def test_a_model_that_cannot_take_the_samples_is_one_line(model, shape, fits) -> None:
    with pytest.raises(ConfigError, match=rf"^model='{model}' is invalid") as info:
        check_model_input(_config(model), shape)
    assert fits + f" samples of shape {shape}" in str(info.value)


@pytest.mark.parametrize(("model", "shape"), [("cnn1d", (7,)), ("cnn", (1, 4, 4)), ("mlp", (2, 2))])
def test_a_model_that_takes_the_samples_passes(model, shape) -> None:
    check_model_input(_config(model), shape)


@pytest.mark.slow
def test_cnn1d_on_square_arrays_exits_2_with_one_line(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x=rng.normal(size=(20, 28, 28)), y=np.arange(20) % 2)
    result = simulate("data=arrays", "data.path=mine.npz", "model=cnn1d", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "model='cnn1d' is invalid: allowed one of logreg, mlp for samples of shape" in line


# --- a mistyped local directory ----------------------------------------------------------


def test_offline_a_name_that_is_no_local_path_fails_at_once(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"^data\.path='mydata' is invalid") as info:
        open_splits("mydata")
    assert time.perf_counter() - start < 1.0
    assert "no local path 'mydata'" in str(info.value) and "offline" in str(info.value)
