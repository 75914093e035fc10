"""The server's side of the batch-size science: each round's plan and measurements.

`RoundInstruments` decides what a round does (batch size, AdaScale gain, schedule progress,
which probes are due) and turns the replies into metrics-row values: the running gradient
noise scales, update norms and the cosine similarity of client updates.

Two noise scales, never mixed: *local*, each client's own B_simple (its n_k samples, from the
within-client probe; bounded by about n_k) and *global*, the pooled training data's B_simple
(McCandlish et al.'s quantity, from the across-client probe). Each is a ratio of the server's
averages of |G|² and tr(Σ) over rounds, reported with its effective number of draws and a
standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedbatch.config import RunConfig
from fedbatch.federated.records import array_to_tensor
from fedbatch.local.batch_sizing import BatchPlanner, NoiseEstimate, RoundPlan
from fedbatch.local.instruments import START_PROBES
from fedbatch.local.noise import NoiseScaleEMA, across_client_estimates
from fedbatch.local.probes import cosine_similarities

# Row keys this module fills (None when not measured in a round).
ROW_KEYS = (
    "batch_size", "effective_batch_size", "lr", "lr_gain", "noise_grad_sq", "noise_trace",
    "noise_scale_local", "noise_scale_local_se", "noise_scale_local_draws", "noise_scale",
    "noise_scale_global", "noise_scale_global_se", "noise_scale_global_draws",
    "noise_scale_across", "noise_scale_exact", "sharpness", "hessian_top",
    "weight_norm", "update_norm_mean", "update_cosine_mean", "update_cosine_min",
    "data_seconds", "compute_seconds", "samples_arrived", "samples_trained",
    "wait_seconds", "prequential_loss", "prequential_accuracy", "steps_per_client",
    "examples_per_client", "tokens_per_step", "padding_fraction",
)  # fmt: skip
_FROM_CLIENTS = ("batch_size", "effective_batch_size", "lr", "lr_gain", "sharpness")
_FROM_CLIENTS += ("hessian_top",)
_FROM_CLIENTS += ("data_seconds", "compute_seconds", "noise_grad_sq", "noise_trace")
_FROM_CLIENTS += ("prequential_loss", "prequential_accuracy")
_FROM_CLIENTS += ("tokens_per_step", "padding_fraction")  # text only


def _due(frequency: int, server_round: int) -> bool:
    return frequency > 0 and server_round % frequency == 0


def _ratio(grad_sq: float, trace: float) -> float:
    return NoiseEstimate(grad_sq, trace).b_simple


def _flat(record: ArrayRecord) -> torch.Tensor:
    return torch.cat([array_to_tensor(a).reshape(-1).double() for a in record.values()])


def _estimate(average: NoiseScaleEMA) -> NoiseEstimate | None:
    return NoiseEstimate(average.grad_sq, average.trace) if average.count else None


def _noise_row(name: str, average: NoiseScaleEMA) -> dict[str, float]:
    if not average.count:
        return {}
    return {
        name: average.b_simple,
        f"{name}_se": average.standard_error,
        f"{name}_draws": average.draws,
    }


class RoundInstruments:
    def __init__(self, cfg: RunConfig, pooled_size: int | None = None) -> None:
        """`pooled_size`: the training data's size over all partitions, the population the
        across-client probe samples from (None: treat it as unbounded)."""
        self.cfg = cfg
        self.planner = BatchPlanner(cfg.batch, cfg.client.batch_size, cfg.rounds)
        monitor = cfg.monitor
        decay = monitor.noise_decay if monitor.noise_average == "ema" else None
        self.local_noise = NoiseScaleEMA(decay=decay)
        self.global_noise = NoiseScaleEMA(decay=decay)
        self.pooled_size = pooled_size
        self.plan = RoundPlan(cfg.client.batch_size, 1.0, 0.0)

    def state_dict(self) -> dict[str, Any]:
        """What carries over rounds: the schedule's progress and last B, the noise averages."""
        planner = {"progress": self.planner.progress, "previous": self.planner.previous}
        noise = {"local": vars(self.local_noise).copy(), "global": vars(self.global_noise).copy()}
        return {"planner": planner, "noise": noise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self.planner).update(state["planner"])
        vars(self.local_noise).update(state["noise"]["local"])
        vars(self.global_noise).update(state["noise"]["global"])

    def round_config(self, server_round: int) -> dict[str, Any]:
        """What every client is told this round, beside the run config."""
        monitor = self.cfg.monitor
        followed = self.global_noise if self.cfg.batch.noise == "global" else self.local_noise
        self.plan = self.planner.plan(
            server_round, _estimate(followed), _estimate(self.local_noise)
        )
        probes = [p for p in START_PROBES if _due(getattr(monitor, p), server_round)]
        grad_norms = _due(monitor.grad_norm, server_round)
        adascale = {}
        if self.plan.gain_noise is not None:  # each client computes its gain from it
            noise = self.plan.gain_noise
            adascale = {"adascale-grad-sq": noise.grad_sq, "adascale-trace": noise.trace}
        return adascale | {
            "batch-size": self.plan.batch_size,
            "progress": self.plan.progress,
            "probes": probes,
            "grad-norms": grad_norms,
            "layer-norms": grad_norms and monitor.layer_norms,
        }

    def across_due(self, server_round: int) -> bool:
        return _due(self.cfg.monitor.noise_across, server_round)

    def across_clients(self, replies: Sequence[Message]) -> float:
        """This round's global B_simple from per-client gradients at the same weights (a
        probe round); the running global average takes it in."""
        ok = [r.content for r in replies if not r.has_error()]
        if len(ok) < 2:
            return math.nan
        sizes = [int(c["metrics"]["num-examples"]) for c in ok]
        grads = [_flat(c["arrays"]) for c in ok]
        mean = sum(g * b for g, b in zip(grads, sizes, strict=True)) / sum(sizes)
        grad_sq, trace = across_client_estimates(
            [float(c["metrics"]["grad_sq"]) for c in ok],
            sizes,
            float(mean.pow(2).sum()),
            self.pooled_size,
        )
        self.global_noise.update(grad_sq, trace)
        return _ratio(grad_sq, trace)

    @staticmethod
    def client_work(replies: Sequence[Message]) -> dict[str, Any]:
        """Optimizer steps and samples processed, each a mean over the clients whose
        updates were aggregated (work a deadline dropped never reached the model): the
        round's share of steps- and examples-to-target."""
        metrics = [r.content["metrics"] for r in replies if not r.has_error()]
        if not metrics:
            return {}
        return {
            "steps_per_client": sum(float(m["steps"]) for m in metrics) / len(metrics),
            "examples_per_client": sum(float(m["examples_seen"]) for m in metrics) / len(metrics),
        }

    @staticmethod
    def stream_totals(replies: Sequence[Message]) -> dict[str, Any]:
        """Arrivals, training and waiting summed over every client that answered, whether
        or not its update was aggregated (a stream moves on regardless)."""
        metrics = [r.content["metrics"] for r in replies if not r.has_error()]
        keys = ("samples_arrived", "samples_trained", "wait_seconds")
        if not metrics or keys[0] not in metrics[0]:
            return {}
        return {key: sum(m[key] for m in metrics) for key in keys}

    def measure(
        self, server_round: int, before: ArrayRecord, replies: Sequence[Message], train: Any
    ) -> dict[str, Any]:
        """Row values from the round's aggregated metrics and the client updates."""
        metrics: MetricRecord = train if train is not None else MetricRecord()
        row: dict[str, Any] = {k: metrics[k] for k in _FROM_CLIENTS if k in metrics}
        row |= {k: v for k, v in metrics.items() if k.startswith("grad_norm/")}
        self.planner.advance(float(metrics["lr_gain"]) if "lr_gain" in metrics else 1.0)
        if "noise_grad_sq" in metrics:
            self.local_noise.update(float(metrics["noise_grad_sq"]), float(metrics["noise_trace"]))
        row |= _noise_row("noise_scale_local", self.local_noise)
        row["noise_scale"] = row.get("noise_scale_local")  # the name before local/global
        row |= _noise_row("noise_scale_global", self.global_noise)
        if "exact_grad_sq" in metrics:
            row["noise_scale_exact"] = _ratio(
                float(metrics["exact_grad_sq"]), float(metrics["exact_trace"])
            )
        if _due(self.cfg.monitor.updates, server_round):
            row |= self._updates(before, replies)
        return row

    @staticmethod
    def _updates(before: ArrayRecord, replies: Sequence[Message]) -> dict[str, float]:
        start = _flat(before)
        updates = [_flat(r.content["arrays"]) - start for r in replies if not r.has_error()]
        mean_cos, min_cos = cosine_similarities([[u] for u in updates])
        norms = [float(u.norm()) for u in updates]
        return {
            "weight_norm": float(start.norm()),
            "update_norm_mean": sum(norms) / len(norms) if norms else math.nan,
            "update_cosine_mean": mean_cos,
            "update_cosine_min": min_cos,
        }
