"""A run's state on disk: the checkpoint a run resumes from, and the final model.

`checkpoint.pt` holds the whole state of a run after its last completed round (global
weights, the strategy's and the loop's state, the callbacks', the clients' `context.state`
where the server holds it, the process-wide random streams). It is written atomically
(temp file, fsync, rename), so a run killed at any moment leaves the previous checkpoint
or the new one, never a torn file; and read with `torch.load(weights_only=True)`, which
builds tensors, numbers, strings, bytes and containers and nothing else. Flower's records
and messages and numpy arrays are written as tagged dicts of those (`encode`/`decode`).

`model.safetensors` is the final global model, tensors by state-dict key: loaded without
unpickling anything (`load_model_file`).
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy

from fedbatch.metrics.callbacks import ResumeError

FORMAT = 1  # bump when the layout changes: an old checkpoint is refused, not misread
TAG = "__type__"
_RECORDS: dict[str, type] = {"MetricRecord": MetricRecord, "ConfigRecord": ConfigRecord}
_METADATA = ("run_id", "message_id", "src_node_id", "dst_node_id", "reply_to_message_id")
_METADATA += ("group_id", "created_at", "ttl", "message_type")


class CheckpointError(ResumeError):
    """A checkpoint that cannot be read (one line)."""


def encode(value: Any) -> Any:
    """`value` in the types `torch.load(weights_only=True)` rebuilds."""
    if isinstance(value, np.generic):  # before float: numpy's float64 is one
        return value.item()
    if value is None or isinstance(value, bool | int | float | str | bytes | torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return {TAG: "ndarray", "values": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, Array):
        fields = {"dtype": value.dtype, "shape": list(value.shape), "stype": value.stype}
        return {TAG: "Array", "data": value.data, **fields}
    if isinstance(value, ArrayRecord | RecordDict):
        items = [(key, encode(item)) for key, item in value.items()]
        return {TAG: type(value).__name__, "items": items}
    if isinstance(value, MetricRecord | ConfigRecord):
        return {TAG: type(value).__name__, "items": encode(dict(value))}
    if isinstance(value, Message):
        return _encode_message(value)
    if isinstance(value, list | tuple):
        return type(value)(encode(item) for item in value)
    if isinstance(value, Mapping):
        return {key: encode(item) for key, item in value.items()}
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _encode_message(message: Message) -> dict[str, Any]:
    metadata = {name: getattr(message.metadata, name) for name in _METADATA}
    error = None
    if message.has_error():
        error = (message.error.code, message.error.reason)
    content = None if message.has_error() else encode(message.content)
    return {TAG: "Message", "metadata": metadata, "content": content, "error": error}


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list | tuple):
        return type(value)(decode(item) for item in value)
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {key: decode(item) for key, item in value.items()}
    if kind == "ndarray":
        return value["values"].numpy()
    if kind == "Array":
        shape = tuple(value["shape"])
        return Array(dtype=value["dtype"], shape=shape, stype=value["stype"], data=value["data"])
    if kind == "ArrayRecord":
        return ArrayRecord({key: decode(item) for key, item in value["items"]})
    if kind == "RecordDict":
        return RecordDict({key: decode(item) for key, item in value["items"]})
    if kind in _RECORDS:
        return _RECORDS[kind](decode(value["items"]))
    if kind == "Message":
        metadata = Metadata(**value["metadata"])
        if value["error"] is not None:
            return Message(error=Error(*value["error"]), metadata=metadata)
        return Message(content=decode(value["content"]), metadata=metadata)
    raise CheckpointError(f"unknown entry {kind!r}: written by another fedbatch version?")


# --- a Flower strategy's state: its data attributes ------------------------------------------


def _is_data(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str | bytes | np.generic):
        return True
    if isinstance(value, np.ndarray | torch.Tensor | Array | ArrayRecord):
        return True
    if isinstance(value, MetricRecord | ConfigRecord):
        return True
    if isinstance(value, list | tuple):
        return all(_is_data(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_data(v) for k, v in value.items())
    return False


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    """A strategy's data attributes (numbers, arrays, records and containers of them:
    FedOpt's moments, FedAvgM's momentum, an adaptive clipping norm), copied; a wrapped
    strategy's, nested. Functions and other objects are left out: the constructor builds
    them again."""
    state: dict[str, Any] = {}
    for name, value in vars(strategy).items():
        if isinstance(value, Strategy):
            state[name] = {TAG: "strategy", "state": strategy_state(value)}
        elif _is_data(value):
            state[name] = copy.deepcopy(value)
    return state


def load_strategy_state(strategy: Strategy, state: Mapping[str, Any]) -> None:
    for name, value in state.items():
        if isinstance(value, dict) and value.get(TAG) == "strategy":
            load_strategy_state(getattr(strategy, name), value["state"])
        else:
            setattr(strategy, name, value)


# --- the process-wide random streams --------------------------------------------------------


def random_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global generators (fedbatch's own draws are seeded per
    use; these are what a library or a user's class may draw from)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }


def load_random_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# --- files -----------------------------------------------------------------------------------


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    write(temporary)
    with temporary.open("rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    payload = {"format": FORMAT, "state": encode(state)}
    _replace_atomically(path, lambda temporary: torch.save(payload, temporary))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, weights_only=True)
    except Exception as error:  # torn, foreign or not a checkpoint: one line
        raise CheckpointError(f"{path} cannot be read as a checkpoint: {_reason(error)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this fedbatch version")
    return decode(payload["state"])


def _reason(error: Exception) -> str:
    """The line of a load error that names the problem (torch's weights-only refusal
    explains itself over many lines; the one naming what it refused is the one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported" in line]
    return (named or lines or [type(error).__name__])[0]


def save_model_file(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """The final global model as safetensors (tensors by state-dict key), with string
    `metadata` in its header (e.g. a text model's vocabulary)."""
    from safetensors.torch import save_file

    owned = {key: tensor.detach().cpu().clone().contiguous() for key, tensor in tensors.items()}
    header = {"format": "pt", **(metadata or {})}
    _replace_atomically(path, lambda temporary: save_file(owned, str(temporary), metadata=header))


def model_file_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a `model.safetensors` header (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return dict(file.metadata() or {})


def load_model_file(path: Path) -> dict[str, torch.Tensor]:
    """A `model.safetensors` state dict; `model.load_state_dict` takes it as it is."""
    from safetensors.torch import load_file

    return load_file(str(path))
