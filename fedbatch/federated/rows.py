"""The metrics row: its schema and the parts every round fills the same way.

One row per round (synchronous) or per aggregation (asynchronous) goes to the callbacks and
on to `metrics.jsonl`. Every key is always present, null when not measured that round, so
rows of different runs line up in a sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import Message, MetricRecord

from fedbatch.federated.monitoring import ROW_KEYS as INSTRUMENT_KEYS
from fedbatch.federated.validation import is_rejection
from fedbatch.federated.virtual_time import ROW_KEYS as CLOCK_KEYS

ROW_KEYS = (
    "round", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
    "global_train_loss", "global_train_accuracy", "client_eval_loss", "client_eval_accuracy",
    "clients_sampled", "clients_replied", "clients_failed", "clients_rejected", "examples",
    "examples_seen",
    "steps", "grad_norm_mean", "grad_norm_max", "generalization_gap", "client_error",
    "seconds", "elapsed_seconds", "virtual_seconds", "noise_scale_exact_global",
    "final_sharpness", "final_hessian_top",
    *INSTRUMENT_KEYS, *CLOCK_KEYS,
)  # fmt: skip

# Client training metrics copied into the row as aggregated (summed, maxed or averaged).
TRAIN_METRICS = ("train_loss", "train_accuracy", "examples_seen", "steps")
TRAIN_METRICS += ("grad_norm_mean", "grad_norm_max")


def empty_row(server_round: int) -> dict[str, Any]:
    return dict.fromkeys(ROW_KEYS) | {"round": server_round}


def metric(metrics: MetricRecord | None, key: str) -> Any:
    return metrics[key] if metrics is not None and key in metrics else None


def reply_counts(sampled: int, replies: Sequence[Message]) -> dict[str, Any]:
    """Who was asked, who answered usably, whose reply the server rejected (counted as
    failed too), and the first failure's reason."""
    errors = [r.error.reason for r in replies if r.has_error()]
    replied = len(replies) - len(errors)
    return {
        "clients_sampled": sampled,
        "clients_replied": replied,
        "clients_failed": sampled - replied,
        "clients_rejected": sum(is_rejection(r) for r in replies),
        "client_error": errors[0] if errors else None,
    }


def train_values(train: MetricRecord | None) -> dict[str, Any]:
    """The aggregated client training metrics; `examples` is their summed data size."""
    return {key: metric(train, key) for key in TRAIN_METRICS} | {
        "examples": metric(train, "num-examples")
    }
