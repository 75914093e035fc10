"""Server-side evaluation of the global model on the central test set."""

from __future__ import annotations

import dataclasses
import functools

import torch

from fedbatch.data.stream import ClientStream
from fedbatch.federated.records import load_arrays
from fedbatch.federated.workload import Workload
from fedbatch.local.trainer import evaluate
from fedbatch.metrics.callbacks import Callback, RoundState


class ServerEvaluation(Callback):
    """Loss and accuracy of the global model on the central held-out test set.

    Evaluates every `eval.every` rounds and the last one, and round 0 (the initial model)
    unless `eval.initial` is false. The generalization gap is test loss − train loss, the
    train loss being the clients' mean over the round's local steps.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.model = workload.initial_model()
        self.drifting = workload.cfg.eval.follow_drift

    @functools.cache  # noqa: B019 (one evaluator per run)
    def _reference(self) -> ClientStream:
        """The drift's course without per-client stagger: onset at `stream.drift_at`."""
        w = self.workload
        stream = dataclasses.replace(w.cfg.stream, drift_stagger=0.0)
        return ClientStream(stream, w.cfg.seed, 0, w.dataset.y_test, w.dataset.num_classes)

    def test_set(
        self, server_round: int, now: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The central test set; with `eval.follow_drift` it drifts as the stream does at
        the end of the round (without per-client stagger): during a gradual drift, that
        fraction of its rows (a fixed seeded order) is in the new concept. `now` is the
        virtual time (the clock's, when one runs)."""
        w = self.workload
        if not self.drifting:
            return w.x_test, w.y_test
        stream = w.cfg.stream
        now = server_round * stream.round_seconds if now is None else now
        fraction = self._reference().concept_at(now)
        order = torch.randperm(len(w.y_test), generator=torch.Generator().manual_seed(w.cfg.seed))
        concept = torch.zeros(len(w.y_test), dtype=torch.int8)
        concept[order[: round(fraction * len(w.y_test))]] = 1
        return w.drift().apply(w.x_test, w.y_test, concept.to(w.x_test.device))

    def _due(self, server_round: int) -> bool:
        cfg = self.workload.cfg
        if server_round == 0:
            return cfg.eval.initial
        return server_round % cfg.eval.every == 0 or server_round == cfg.rounds

    def on_round_end(self, state: RoundState) -> None:
        if not self._due(state.round):
            return
        load_arrays(self.model, state.arrays)
        x, y = self.test_set(state.round, state.row.get("virtual_seconds"))
        loss, accuracy = evaluate(self.model, x, y, self.workload.cfg.eval.batch_size)
        state.row["test_loss"] = loss
        state.row["test_accuracy"] = accuracy
        train_loss = state.row.get("train_loss")
        if train_loss is not None:
            state.row["generalization_gap"] = loss - train_loss
