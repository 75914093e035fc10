"""The user's own data (`data=hf`, `data=arrays`) and natural partitions: every format
reads back the values written, labels become class indices, bad input is one line."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedbatch.config import ConfigError, DataConfig, PartitionConfig, build_config
from fedbatch.config.compose import compose_raw
from fedbatch.data.datasets import load_dataset
from fedbatch.data.files import class_indices
from fedbatch.data.partition import natural_count, partition_indices
from tests.conftest import tiny_raw
from tests.own_data import ROWS, TABLE_FORMATS, WRITERS, table, write_images, write_table


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _rows(x: np.ndarray) -> np.ndarray:
    """Rows in lexicographic order, to compare sets of samples."""
    return x[np.lexsort(x.T[::-1])]


# --- labels ------------------------------------------------------------------------------


def test_strings_become_their_rank_in_sorted_order() -> None:
    train, test, count = class_indices(np.array(["pear", "apple", "fig"]), np.array(["fig"]))
    assert train.tolist() == [2, 0, 1] and test.tolist() == [1] and count == 3


def test_non_negative_integers_stay_and_count_to_the_largest() -> None:
    train, test, count = class_indices(np.array([0, 4, 2]), np.array([1]))
    assert train.tolist() == [0, 4, 2] and test.tolist() == [1] and count == 5
    assert class_indices(np.array([0, 1]), np.array([1]), classes=7)[2] == 7  # a ClassLabel's


def test_negative_integers_and_integral_floats() -> None:
    assert class_indices(np.array([-1, 1, -1]), np.array([1]))[0].tolist() == [0, 1, 0]
    assert class_indices(np.array([1.0, 0.0]), np.array([2.0]))[2] == 3


@pytest.mark.parametrize(
    ("labels", "shown"),
    [(np.array([0.5, 1.0]), "[0.5]"), (np.array(["cat", "cat"]), "1 class")],
)
def test_labels_that_are_no_classes_are_one_line(labels: np.ndarray, shown: str) -> None:
    with pytest.raises(ConfigError, match=r"^data\.label=") as info:
        class_indices(labels, labels[:0])
    assert shown in str(info.value)


# --- formats -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", TABLE_FORMATS)
def test_each_table_format_reads_back_what_was_written(tmp_path, form: str) -> None:
    columns = table()
    path = write_table(tmp_path, form, columns)
    cfg = DataConfig(name="hf", path=str(path), label="kind", features=("a", "b"))
    ds = load_dataset(cfg, 0)
    assert ds.input_shape == (2,) and ds.num_classes == 2
    assert len(ds.y_test) == 24 and len(ds.y_train) == ROWS - 24  # ceil(0.2 · 120)
    x = np.concatenate([ds.x_train, ds.x_test])
    written = np.stack([columns["a"], columns["b"]], axis=1).astype(np.float32)
    np.testing.assert_allclose(_rows(x), _rows(written), rtol=1e-6)
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        np.testing.assert_array_equal(ys, (xs.sum(axis=1) >= 0).astype(int))  # no=0, yes=1


def test_a_directory_with_train_and_test_files_gives_both_splits(tmp_path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        write_table(tmp_path, "parquet", table(30, seed)).rename(tmp_path / f"{split}.parquet")
    cfg = DataConfig(name="hf", path=str(tmp_path), label="kind", test_split="test")
    ds = load_dataset(cfg, 0)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 30
    assert ds.input_shape == (3,)  # a, b and writer: every column but the label
    np.testing.assert_allclose(ds.x_test[:, 0], table(30, 1)["a"].astype(np.float32))


def test_normalize_standardises_with_the_training_statistics(tmp_path) -> None:
    path = write_table(tmp_path, "csv", table())
    raw = DataConfig(name="hf", path=str(path), label="kind", features=("a", "b"))
    plain, scaled = load_dataset(raw, 0), load_dataset(replace(raw, normalize=True), 0)
    mean, std = plain.x_train.mean(axis=0), plain.x_train.std(axis=0)
    np.testing.assert_allclose(scaled.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.x_test, (plain.x_test - mean) / std, rtol=1e-4, atol=1e-5)


def test_an_image_folder_gives_chw_floats_in_unit_range(tmp_path) -> None:
    pixels = write_images(tmp_path / "images")
    ds = load_dataset(DataConfig(name="hf", path=str(tmp_path / "images")), 0)
    assert ds.input_shape == (3, 4, 4) and ds.num_classes == 2
    assert len(ds.y_train) + len(ds.y_test) == 12
    x, y = np.concatenate([ds.x_train, ds.x_test]), np.concatenate([ds.y_train, ds.y_test])
    for label, name in enumerate(("bright", "dark")):  # imagefolder sorts the class folders
        expected = np.moveaxis(pixels[name], -1, 1).reshape(len(pixels[name]), -1) / 255.0
        np.testing.assert_allclose(_rows(x[y == label].reshape(6, -1)), _rows(expected), atol=1e-6)


def test_normalized_images_have_zero_mean_per_channel(tmp_path) -> None:
    write_images(tmp_path / "images")
    cfg = DataConfig(name="hf", path=str(tmp_path / "images"), normalize=True)
    means = load_dataset(cfg, 0).x_train.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(means, 0, atol=1e-5)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_arrays_with_their_own_test_set(tmp_path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(20, 1, 3, 3)), "y": np.arange(20) % 3,
              "x_test": rng.normal(size=(6, 1, 3, 3)), "y_test": np.arange(6) % 3}  # fmt: skip
    path = tmp_path / f"mine{suffix}"
    if suffix == ".npz":
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    ds = load_dataset(DataConfig(name="arrays", path=str(path)), 0)
    assert ds.input_shape == (1, 3, 3) and ds.num_classes == 3
    np.testing.assert_allclose(ds.x_train, arrays["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        ({"path": "missing/data.parquet"}, "data.path", "no such file"),
        ({"path": "{tmp}/notes.txt"}, "data.path", "not a .txt file"),
        ({"label": "species"}, "data.label", "a, b, kind, writer"),
        ({"label": "a"}, "data.label", "class labels"),
        ({"label": "kind", "features": ["a", "c"]}, "data.features", "a, b, kind, writer"),
        ({"label": "a", "features": ["kind"]}, "data.label", "class labels"),
        ({"label": "writer", "features": ["kind"]}, "data.features", "numeric columns"),
        ({"label": "kind", "test_split": "validation"}, "data.test_split", "splits train"),
    ],
)
def test_bad_table_settings_are_one_line_naming_the_key(tmp_path, data, key, says) -> None:
    write_table(tmp_path, "parquet", table())
    (tmp_path / "notes.txt").write_text("x")
    data = {"name": "hf", "path": str(tmp_path / "data.parquet")} | data
    data["path"] = data["path"].format(tmp=tmp_path)
    with pytest.raises(ConfigError) as info:
        load_dataset(build_config(tiny_raw(data=data)).data, 0)
    message = str(info.value)
    assert message.startswith(f"{key}=") and says in message and "\n" not in message


def test_arrays_without_y_and_of_another_format_are_one_line(tmp_path) -> None:
    np.savez(tmp_path / "x_only.npz", x=np.zeros((4, 2)))
    (tmp_path / "table.csv").write_text("a\n1\n")
    for name, says in (("x_only.npz", "it holds x"), ("table.csv", "a .npz or .pt file")):
        with pytest.raises(ConfigError, match=rf"^data\.path=.*{says}"):
            load_dataset(DataConfig(name="arrays", path=str(tmp_path / name)), 0)


# --- natural partitions ------------------------------------------------------------------


def test_natural_count_is_one_per_id_or_per_group() -> None:
    ids = np.array([3, 1, 3, 2, 5, 1, 9])  # 5 distinct
    assert natural_count(ids, None) == 5
    assert natural_count(ids, 2) == 3 and natural_count(ids, 5) == 1 and natural_count(ids, 9) == 1


def test_natural_partitions_hold_each_ids_rows_in_sorted_id_order() -> None:
    ids = np.array([2, 0, 1, 2, 2, 0, 1, 3])
    labels = np.zeros(8, dtype=np.int64)
    parts = partition_indices(labels, PartitionConfig(name="natural", by="w"), 4, 0, ids)
    assert [p.tolist() for p in parts] == [[1, 5], [2, 6], [0, 3, 4], [7]]
    grouped = PartitionConfig(name="natural", by="w", group_size=3)
    parts = partition_indices(labels, grouped, 2, 0, ids)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3, 4, 5, 6], [7]]


def _natural_raw(path, **partition) -> dict:
    raw = tiny_raw(data={"name": "arrays", "path": str(path)}, clients_per_round=2)
    raw["partition"] = {"name": "natural", "by": "writer"} | partition
    raw.pop("num_clients")
    return raw


def test_num_clients_comes_from_the_data_and_a_disagreeing_one_is_refused(tmp_path) -> None:
    columns = table()
    x = np.stack([columns["a"], columns["b"]], axis=1)
    np.savez(tmp_path / "w.npz", x=x, y=columns["kind"], writer=columns["writer"],
             x_test=x[:10], y_test=columns["kind"][:10])  # fmt: skip
    assert build_config(_natural_raw(tmp_path / "w.npz")).num_clients == WRITERS
    assert build_config(_natural_raw(tmp_path / "w.npz", group_size=2)).num_clients == 3
    agreeing = _natural_raw(tmp_path / "w.npz") | {"num_clients": WRITERS}
    assert build_config(agreeing).num_clients == WRITERS
    with pytest.raises(ConfigError, match=r"^num_clients=4 is invalid: allowed 5 or null"):
        build_config(_natural_raw(tmp_path / "w.npz") | {"num_clients": 4})
    with pytest.raises(ConfigError, match=r"^clients_per_round=9 is invalid: .*<= 5"):
        build_config(_natural_raw(tmp_path / "w.npz") | {"clients_per_round": 9})
    with pytest.raises(ConfigError, match=r"^partition\.by='user' is invalid: .*writer"):
        build_config(_natural_raw(tmp_path / "w.npz", by="user"))


def test_natural_needs_the_users_data_and_a_column() -> None:
    with pytest.raises(ConfigError, match=r"^partition='natural' is invalid: .*data=hf"):
        build_config(tiny_raw(partition={"name": "natural", "by": "w"}))
    with pytest.raises(ConfigError, match=r"^partition\.by=None is invalid"):
        build_config(
            tiny_raw(data={"name": "arrays", "path": "x.npz"}, partition={"name": "natural"})
        )


def test_hydra_leaves_num_clients_unset_for_natural_only() -> None:
    assert compose_raw(["partition=natural"])["num_clients"] is None
    assert compose_raw(["partition=iid"])["num_clients"] == 10
    assert compose_raw(["partition=natural", "num_clients=3"])["num_clients"] == 3
