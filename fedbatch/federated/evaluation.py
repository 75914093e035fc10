"""Server-side measurements of the global model: test and train loss (the true
generalization gap) and the pooled training data's exact gradient noise scale."""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch.nn import functional as F

from fedbatch.data.stream import ClientStream
from fedbatch.federated.records import load_arrays
from fedbatch.federated.workload import Workload
from fedbatch.local.noise import exact_noise
from fedbatch.local.sharpness import epsilon_sharpness, hessian_top_eigenvalue
from fedbatch.local.trainer import evaluate
from fedbatch.metrics.callbacks import Callback, RoundState
from fedbatch.seeding import derive_seed


class ServerEvaluation(Callback):
    """Loss and accuracy of the global model on the central held-out test set, and its
    generalization gap.

    Evaluates every `eval.every` rounds and the last one, and round 0 (the initial model)
    unless `eval.initial` is false. The gap is the *same* model's test loss − train loss:
    in simulation the train loss is the global model's on a fixed sample of the pooled
    training data (`eval.train_samples`); in a deployment, whose server holds no client
    data, it is the clients' evaluation of the global model on their data
    (`client_eval_loss`). Never the clients' running loss of their local models
    (`train_loss`), which is another model's, measured while it trained.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.model = workload.initial_model()
        self.drifting = workload.cfg.eval.follow_drift
        self.train_sample = _train_sample(workload)

    @functools.cache  # noqa: B019 (one evaluator per run)
    def _reference(self) -> ClientStream:
        """The drift's course without per-client stagger: onset at `stream.drift_at`."""
        w = self.workload
        stream = dataclasses.replace(w.cfg.stream, drift_stagger=0.0)
        return ClientStream(stream, w.cfg.seed, 0, w.dataset.y_test, w.dataset.num_classes)

    def test_set(self, now: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The central test set; with `eval.follow_drift` it drifts as the stream does at
        virtual time `now`, the end of the round (without per-client stagger): during a
        gradual drift, that fraction of its rows (a fixed seeded order) is in the new
        concept."""
        return self._drifted(self.workload.x_test, self.workload.y_test, now)

    def _drifted(
        self, x: torch.Tensor, y: torch.Tensor, now: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.workload
        if not self.drifting:
            return x, y
        if now is None:
            raise ValueError("a drifting test set needs the round's virtual time")
        fraction = self._reference().concept_at(now)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(w.cfg.seed))
        concept = torch.zeros(len(y), dtype=torch.int8)
        concept[order[: round(fraction * len(y))]] = 1
        return w.drift().apply(x, y, concept.to(x.device))

    def _due(self, server_round: int) -> bool:
        cfg = self.workload.cfg
        if server_round == 0:
            return cfg.eval.initial
        return server_round % cfg.eval.every == 0 or server_round == cfg.rounds

    def on_round_end(self, state: RoundState) -> None:
        if not self._due(state.round):
            return
        load_arrays(self.model, state.arrays)
        now = state.row.get("virtual_seconds")
        batch = self.workload.cfg.eval.batch_size
        x, y = self.test_set(now)
        loss, accuracy = evaluate(self.model, x, y, batch)
        state.row["test_loss"] = loss
        state.row["test_accuracy"] = accuracy
        train_loss = state.row.get("client_eval_loss")
        if self.train_sample is not None:
            x, y = self._drifted(*self.train_sample, now)
            train_loss, train_accuracy = evaluate(self.model, x, y, batch)
            state.row["global_train_loss"] = train_loss
            state.row["global_train_accuracy"] = train_accuracy
        if train_loss is not None:
            state.row["generalization_gap"] = loss - train_loss


class PooledExactNoise(Callback):
    """`noise_scale_exact_global`: the exact B_simple of the pooled training data from
    per-example gradients (torch.func), at the weights each due round *started* from (the
    weights the across-client probe sees), every `monitor.noise_exact` rounds.

    The reference `noise_scale_global` estimates; simulation engines only (a deployment's
    server holds no client data). Costs one per-example gradient pass over the pooled data.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.model = workload.initial_model()
        pooled = torch.from_numpy(workload.partitions.pooled())
        self.index = pooled.to(workload.x_train.device)
        self.start: object = None  # the weights the next round starts from

    @staticmethod
    def wanted(workload: Workload) -> bool:
        cfg = workload.cfg
        return cfg.monitor.noise_exact > 0 and cfg.engine.name != "deployment"

    def on_round_end(self, state: RoundState) -> None:
        frequency = self.workload.cfg.monitor.noise_exact
        if state.round > 0 and state.round % frequency == 0 and self.start is not None:
            load_arrays(self.model, self.start)
            w = self.workload
            x, y = w.x_train[self.index], w.y_train[self.index]
            grad_sq, trace = exact_noise(self.model, F.cross_entropy, x, y)
            state.row["noise_scale_exact_global"] = trace / grad_sq if grad_sq > 0 else None
        self.start = state.arrays

    def state_dict(self) -> dict[str, object]:
        return {"start": self.start}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.start = state["start"]


class FinalModelProbe(Callback):
    """`final_sharpness` and `final_hessian_top`: the curvature of the *final* global model
    (Keskar et al. 2017 compare minima, not the path to them), in the last round's row.

    Probes the model the run ends with, after the last round or the round a stop
    (`stop.*`) ends the run at, on the first `monitor.probe_samples` of the pooled
    training sample (`eval.train_samples`). ε-sharpness takes `monitor.sharpness_steps`
    of projected ascent, so it is a lower bound of the maximum over the box. Simulation
    engines only: a deployment's server holds no client data. Must follow the
    convergence monitor, whose stop it reads.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.model = workload.initial_model()
        sample = _train_sample(workload)
        if sample is None:
            raise ValueError("the final probe needs eval.train_samples (simulation only)")
        limit = workload.cfg.monitor.probe_samples
        self.x, self.y = sample[0][:limit], sample[1][:limit]

    @staticmethod
    def wanted(workload: Workload) -> bool:
        return workload.cfg.monitor.final

    def on_round_end(self, state: RoundState) -> None:
        cfg = self.workload.cfg
        if state.round == 0 or (state.round < cfg.rounds and state.stop_reason is None):
            return
        load_arrays(self.model, state.arrays)
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "final-probe"))
        monitor = cfg.monitor
        sharpness = epsilon_sharpness(
            self.model,
            F.cross_entropy,
            self.x,
            self.y,
            epsilon=monitor.sharpness_epsilon,
            steps=monitor.sharpness_steps,
        )
        top = hessian_top_eigenvalue(
            self.model,
            F.cross_entropy,
            self.x,
            self.y,
            iterations=monitor.hessian_iterations,
            generator=generator,
        )
        state.row["final_sharpness"] = sharpness
        state.row["final_hessian_top"] = top


def _train_sample(workload: Workload) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A fixed seeded sample of the pooled training data (the union of the partitions),
    or None in a deployment (its server holds no client data) or with eval.train_samples=0."""
    cfg = workload.cfg
    if cfg.engine.name == "deployment" or cfg.eval.train_samples == 0:
        return None
    pooled = torch.from_numpy(workload.partitions.pooled())
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, "train-sample"))
    index = pooled[torch.randperm(len(pooled), generator=generator)[: cfg.eval.train_samples]]
    index = index.to(workload.x_train.device)
    return workload.x_train[index], workload.y_train[index]
