"""Server-side evaluation of the global model on the central test set."""

from __future__ import annotations

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

    def _due(self, server_round: int) -> bool:
        cfg = self.workload.cfg
        if server_round == 0:
            return cfg.eval.initial
        return server_round % cfg.eval.every == 0 or server_round == cfg.rounds

    def on_round_end(self, state: RoundState) -> None:
        if not self._due(state.round):
            return
        load_arrays(self.model, state.arrays)
        w = self.workload
        loss, accuracy = evaluate(self.model, w.x_test, w.y_test, w.cfg.eval.batch_size)
        state.row["test_loss"] = loss
        state.row["test_accuracy"] = accuracy
        train_loss = state.row.get("train_loss")
        if train_loss is not None:
            state.row["generalization_gap"] = loss - train_loss
