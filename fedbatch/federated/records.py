"""Conversions between torch models and Flower records, and client-metric aggregation."""

from __future__ import annotations

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn

# BatchNorm's step counter is an integer bookkeeping buffer, not a weight to average.
_NOT_AVERAGED = ("num_batches_tracked",)

NUM_EXAMPLES = "num-examples"
# How each client metric combines across clients (the rest: mean weighted by num-examples).
SUMMED = ("steps", "examples_seen")
MAXED = ("grad_norm_max",)


def model_to_arrays(model: nn.Module) -> ArrayRecord:
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(_NOT_AVERAGED)}
    return ArrayRecord(state)


def load_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Load global weights into `model` in place."""
    missing, unexpected = model.load_state_dict(arrays.to_torch_state_dict(), strict=False)
    if unexpected or any(not k.endswith(_NOT_AVERAGED) for k in missing):
        raise ValueError(f"weights do not fit the model: missing {missing}, extra {unexpected}")


def aggregate_client_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Combine client MetricRecords: counts are summed, maxima maxed, the rest averaged.

    Used as the strategies' `train_metrics_aggr_fn`/`evaluate_metrics_aggr_fn`, since
    Flower's default weighted mean would average step counts and maxima.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = [float(m[weight_key]) for m in metrics]
    total = sum(weights) or 1.0
    out = MetricRecord()
    for key in metrics[0]:
        values = [m[key] for m in metrics]
        if key == weight_key or key in SUMMED:
            out[key] = sum(values)
        elif key in MAXED:
            out[key] = max(values)
        else:
            out[key] = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    return out
