"""Server-side evaluation of the global model on the central test set."""

from __future__ import annotations

from fedbatch.federated.records import load_arrays
from fedbatch.federated.workload import Workload
from fedbatch.local.trainer import evaluate
from fedbatch.metrics.callbacks import Callback, RoundState


class ServerEvaluation(Callback):
    """Loss and accuracy of the global model on the central held-out test set."""

    def __init__(self, workload: Workload, every: int = 1, last_round: int | None = None):
        self.workload = workload
        self.every = every
        self.last_round = last_round
        self.model = workload.initial_model()

    def on_round_end(self, state: RoundState) -> None:
        if state.round % self.every and state.round != self.last_round:
            return
        load_arrays(self.model, state.arrays)
        w = self.workload
        loss, accuracy = evaluate(self.model, w.x_test, w.y_test, w.cfg.eval.batch_size)
        state.row["test_loss"] = loss
        state.row["test_accuracy"] = accuracy
