"""checkpoint.pt and model.safetensors: what goes in comes back, a write is all or nothing,
and reading never unpickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam, FedAvgM

from fedbatch.federated.checkpoint import (
    CheckpointError,
    _replace_atomically,
    load_checkpoint,
    load_model_file,
    load_strategy_state,
    save_checkpoint,
    save_model_file,
    strategy_state,
)
from tests.flower_messages import Nodes, global_arrays, same_arrays, train_replies


def _round_trip(state: dict, tmp_path: Path) -> dict:
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    return load_checkpoint(tmp_path / "checkpoint.pt")


def test_records_messages_arrays_and_numpy_numbers_come_back_as_they_went_in(tmp_path):
    replies = train_replies(seed=1, sizes=[5, 7], failed=1)
    state = {
        "arrays": global_arrays(),
        "metrics": MetricRecord({"loss": 0.25, "steps": 3, "curve": [1.0, 2.0]}),
        "config": ConfigRecord({"name": "x", "on": True, "blob": b"\x00\x01"}),
        "moments": {"w": np.arange(6, dtype=np.float64).reshape(2, 3)},
        "numbers": [np.float32(0.5), np.int64(7), np.float64(1e-3)],
        "replies": replies,
        "tuple": (1, "a", None),
    }
    back = _round_trip(state, tmp_path)

    assert same_arrays(back["arrays"], state["arrays"])
    assert dict(back["metrics"]) == dict(state["metrics"])
    assert dict(back["config"]) == dict(state["config"])
    assert back["moments"]["w"].dtype == np.float64
    np.testing.assert_array_equal(back["moments"]["w"], state["moments"]["w"])
    assert back["numbers"] == [0.5, 7, 1e-3] and type(back["numbers"][1]) is int
    assert back["tuple"] == (1, "a", None)
    for ours, theirs in zip(back["replies"], replies, strict=True):
        assert isinstance(ours, Message)
        assert ours.metadata.src_node_id == theirs.metadata.src_node_id
        assert ours.metadata.reply_to_message_id == theirs.metadata.reply_to_message_id
        assert ours.has_error() == theirs.has_error()
        if theirs.has_error():
            assert (ours.error.code, ours.error.reason) == (theirs.error.code, theirs.error.reason)
        else:
            assert same_arrays(ours.content["arrays"], theirs.content["arrays"])
            assert dict(ours.content["metrics"]) == dict(theirs.content["metrics"])


def test_a_value_a_checkpoint_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot hold a object"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"x": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("strategy_class", "kwargs"),
    [(FedAdam, {"eta": 0.1}), (FedAvgM, {"server_learning_rate": 1.0, "server_momentum": 0.9})],
)
def test_a_server_optimizer_continues_from_its_saved_moments(strategy_class, kwargs, tmp_path):
    """Round 2 aggregated by a fresh strategy given round 1's saved state equals round 2 of
    the strategy that never stopped; without the state it does not."""

    def after_round_one():
        strategy = strategy_class(**kwargs)
        arrays = global_arrays()
        list(strategy.configure_train(1, arrays, ConfigRecord(), Nodes(2)))
        arrays, _ = strategy.aggregate_train(1, train_replies(seed=1, sizes=[5, 7]))
        list(strategy.configure_train(2, arrays, ConfigRecord(), Nodes(2)))
        return strategy

    def round_two(strategy):
        return strategy.aggregate_train(2, train_replies(seed=2, sizes=[5, 7]))[0]

    saved = _round_trip({"strategy": strategy_state(after_round_one())}, tmp_path)["strategy"]
    resumed = strategy_class(**kwargs)
    list(resumed.configure_train(1, global_arrays(), ConfigRecord(), Nodes(2)))
    forgetful = round_two(resumed)
    resumed = strategy_class(**kwargs)
    load_strategy_state(resumed, saved)

    assert same_arrays(round_two(resumed), round_two(after_round_one()))
    assert not same_arrays(forgetful, round_two(after_round_one()))


def test_a_write_cut_short_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"round": 1})

    def torn(temporary: Path) -> None:
        temporary.write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space"):
        _replace_atomically(path, torn)
    assert load_checkpoint(path) == {"round": 1}


class _Payload:
    """Unpickled, it would create `marker`: what a malicious pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_reading_a_checkpoint_never_unpickles_an_object(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 1, "state": {"round": 1, "x": _Payload(marker)}}, path)

    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)

    assert not marker.exists()
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint", pickle.dumps({"format": 1, "state": {}}, protocol=2)[:-3]],
    ids=["empty", "text", "torn"],
)
def test_a_file_that_is_no_checkpoint_is_one_line(content, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value)


def test_a_checkpoint_of_another_format_is_refused_not_misread(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 99, "state": {}}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this fedbatch version"):
        load_checkpoint(path)


def test_the_model_file_holds_every_tensor_by_its_state_dict_key(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model.train()(torch.randn(8, 3))  # running statistics that differ from the init
    save_model_file(tmp_path / "model.safetensors", model.state_dict())

    loaded = load_model_file(tmp_path / "model.safetensors")

    assert loaded.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded[key], tensor) and loaded[key].dtype == tensor.dtype
