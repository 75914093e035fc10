"""The metrics a client's training round replies with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.app import MetricRecord

from fedbatch.data.stream_rounds import StreamRound
from fedbatch.federated.records import NUM_EXAMPLES
from fedbatch.local.plan import LocalPlan
from fedbatch.local.trainer import LocalResult

if TYPE_CHECKING:
    from fedbatch.federated.client_app import Task


def train_metrics(task: Task, plan: LocalPlan, result: LocalResult, probes: dict) -> MetricRecord:
    values = {
        NUM_EXAMPLES: len(task.x),
        "train_loss": result.loss,
        "train_accuracy": result.accuracy,
        "steps": result.steps,
        "examples_seen": result.examples_seen,
        "batch_size": plan.batch_size,
        "effective_batch_size": plan.effective_batch_size,
        "pass_batch": plan.pass_batch,  # samples per forward/backward pass
        "passes": plan.passes,  # passes per optimizer step
        "lr": result.lr_mean if plan.lr_at is not None else plan.lr,
        "lr_gain": plan.lr_gain,
    }
    if bool(task.config["grad-norms"]):
        values |= {"grad_norm_mean": result.grad_norm_mean, "grad_norm_max": result.grad_norm_max}
    values |= {f"grad_norm/{name}": v for name, v in result.layer_grad_norms.items()}
    if result.times is not None:
        values |= {"data_seconds": result.times.data, "compute_seconds": result.times.compute}
    if task.y.ndim == 2:  # text: every client replies these, nan when it took no step
        values |= token_metrics(result)
    return MetricRecord(values | probes)


def token_metrics(result: LocalResult) -> dict[str, float]:
    """Real tokens per optimizer step, and the share of computed positions that were
    padding (each batch is trimmed to its longest sequence)."""
    nan = float("nan")
    return {
        "tokens_per_step": result.tokens / result.steps if result.steps else nan,
        "padding_fraction": 1 - result.tokens / result.token_slots if result.token_slots else nan,
    }


def with_stream(metrics: MetricRecord, streamed: StreamRound, result: LocalResult) -> MetricRecord:
    """Streaming fields; FedAvg weighs the client by the samples it holds (its local data)."""
    values = dict(metrics) | {
        NUM_EXAMPLES: max(1, streamed.held),
        "samples_arrived": streamed.samples_arrived,
        "samples_trained": streamed.samples_trained,
        "wait_seconds": streamed.wait_seconds,
        "prequential_samples": result.prequential_samples,
        "prequential_loss": result.prequential_loss,
        "prequential_accuracy": result.prequential_accuracy,
    }
    return MetricRecord(values)
