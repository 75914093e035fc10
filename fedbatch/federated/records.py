"""Conversions between torch models and Flower records, and client-metric aggregation.

Flower stores each array as `np.save` bytes. Writing and parsing those `.npy` headers
(`np.load` parses them with `ast.literal_eval`) cost more than the copy itself for small
tensors, twice per client per round. The converters below produce byte-identical Arrays
with a header cached per (dtype, shape), and read them back with `np.frombuffer`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from torch import nn

from fedbatch.compat import fast_array

# BatchNorm's step counter is an integer bookkeeping buffer, not a weight to average.
_NOT_AVERAGED = ("num_batches_tracked",)
_NUMPY_STYPE = "numpy.ndarray"

NUM_EXAMPLES = "num-examples"
# How each client metric combines across clients: counts add up, maxima take the max,
# per-sample and per-step means are weighted by what they average over, and the rest by
# the client's dataset size (num-examples, FedAvg's weight).
SUMMED = ("steps", "examples_seen", "data_seconds", "compute_seconds", "samples_arrived")
SUMMED += ("samples_trained", "wait_seconds", "prequential_samples")
SUMMED += ("tokens_seen", "token_slots", "eval_tokens")  # text only
MAXED = ("grad_norm_max",)
MEAN_WEIGHTS = {
    "train_loss": "examples_seen",
    "train_accuracy": "examples_seen",
    "grad_norm_mean": "steps",
    "prequential_loss": "prequential_samples",
    "prequential_accuracy": "prequential_samples",
    "tokens_per_step": "steps",
}
# Text: loss and accuracy are means over real tokens, so they weigh by the client's real
# tokens, and its padding share by the positions it computed (giving 1 − Σtokens/Σslots).
# Used where every reply carries the count (text replies do, others never).
TOKEN_WEIGHTS = {
    "train_loss": "tokens_seen",
    "train_accuracy": "tokens_seen",
    "padding_fraction": "token_slots",
    "eval_loss": "eval_tokens",
    "eval_accuracy": "eval_tokens",
}


@lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The `.npy` header `np.save` writes for a C-contiguous array of this dtype and shape."""
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


@lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # numpy formats it in Python, each time


def numpy_to_array(values: np.ndarray) -> Array:
    """An Array identical to `Array(values)`, without re-formatting the header each time."""
    if not values.flags.c_contiguous:
        return Array(values)  # np.save keeps a Fortran-ordered array Fortran-ordered
    dtype, shape = _dtype_name(values.dtype), values.shape
    data = b"".join((_npy_header(dtype, shape), values.reshape(-1).view(np.uint8)))  # one copy
    return fast_array(dtype, shape, _NUMPY_STYPE, data)


def tensor_to_array(tensor: torch.Tensor) -> Array:
    """An Array identical to `Array(tensor)`, without re-formatting the header each time."""
    return numpy_to_array(tensor.detach().cpu().contiguous().numpy())


def array_to_numpy(array: Array) -> np.ndarray:
    """A read-only view of the Array's values (no header parsing, no copy)."""
    header = _npy_header(array.dtype, tuple(array.shape))
    if array.stype != _NUMPY_STYPE or not array.data.startswith(header):
        return array.numpy()  # another layout (e.g. Fortran order)
    values = np.frombuffer(array.data, dtype=array.dtype, offset=len(header))
    return values.reshape(array.shape)


_READ_ONLY_WARNED = False  # torch warns once per process about a read-only numpy array


def array_to_tensor(array: Array) -> torch.Tensor:
    """A read-only CPU tensor viewing the Array's bytes (no header parsing, no copy)."""
    global _READ_ONLY_WARNED
    values = array_to_numpy(array)
    if _READ_ONLY_WARNED:  # torch will not warn again: skip catch_warnings (~3 µs a call)
        return torch.from_numpy(values)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(values)
    _READ_ONLY_WARNED = not values.flags.writeable
    return tensor


def aggregate_arrayrecords(records: list[RecordDict], weighting_metric_name: str) -> ArrayRecord:
    """Flower's `strategy_utils.aggregate_arrayrecords` (FedAvg's weighted mean), the same
    arithmetic in the same order, reading and writing the Arrays without `.npy` parsing."""
    weights = [
        float(next(iter(record.metric_records.values()))[weighting_metric_name])
        for record in records
    ]
    total = sum(weights)
    aggregated: dict[str, np.ndarray] = {}
    for record, weight in zip(records, weights, strict=True):
        factor = weight / total
        for array_record in record.array_records.values():
            for key, array in array_record.items():
                if key not in aggregated:
                    aggregated[key] = array_to_numpy(array) * factor
                else:
                    aggregated[key] += array_to_numpy(array) * factor
    return ArrayRecord({key: numpy_to_array(values) for key, values in aggregated.items()})


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    return state_to_arrays(model.state_dict())


def state_to_arrays(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A model's state dict as the ArrayRecord that travels (its averaged entries)."""
    record = ArrayRecord()
    for key, value in state.items():
        if not key.endswith(_NOT_AVERAGED):
            record[key] = tensor_to_array(value)
    return record


@torch.no_grad()
def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Copy global weights into `model` in place."""
    state = model.state_dict(keep_vars=True)  # the tensors themselves: no detached views
    expected = {k for k in state if not k.endswith(_NOT_AVERAGED)}
    if set(arrays.keys()) != expected:
        raise ValueError(
            f"weights do not fit the model: got {sorted(arrays)}, need {sorted(expected)}"
        )
    for key, array in arrays.items():
        state[key].copy_(array_to_tensor(array))


def aggregate_client_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Combine client MetricRecords: counts are summed, maxima maxed, the rest averaged.

    Used as the strategies' `train_metrics_aggr_fn`/`evaluate_metrics_aggr_fn`, since
    Flower's default weighted mean would average step counts and maxima.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    out = MetricRecord()
    for key in metrics[0]:
        values = [m[key] for m in metrics]
        if key == weight_key or key in SUMMED:
            out[key] = sum(values)
        elif key in MAXED:
            out[key] = max(values)
        else:
            by = _weight_of(key, metrics, weight_key)
            weights = [float(m[by]) if by in m else float(m[weight_key]) for m in metrics]
            pairs = [(v, w) for v, w in zip(values, weights, strict=True) if w > 0]
            total = sum(w for _, w in pairs)
            out[key] = sum(v * w for v, w in pairs) / total if total else float("nan")
    return out


def _weight_of(key: str, metrics: list[MetricRecord], weight_key: str) -> str:
    """The metric a client's `key` is weighted by across clients."""
    tokens = TOKEN_WEIGHTS.get(key)
    if tokens is not None and all(tokens in m for m in metrics):
        return tokens
    return MEAN_WEIGHTS.get(key, weight_key)
