"""Per-round hooks of the server loop, and the convergence monitor (no Flower here)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fedbatch.config import StopConfig


class ResumeError(RuntimeError):
    """A run that cannot be resumed from its directory (one line for the user)."""


@dataclass
class RoundState:
    """One round as the callbacks see it; they add metrics to `row` or ask to stop."""

    round: int
    arrays: Any  # the global weights as the engine holds them (a Flower ArrayRecord)
    row: dict[str, Any]
    stop_reason: str | None = None


@dataclass
class RunOutcome:
    rounds_completed: int
    stopped_because: str
    seconds: float
    arrays: Any = None  # the final global weights (a Flower ArrayRecord)


class Callback:
    """Base class: override what you need. Callbacks run in the order they are given."""

    def on_round_end(self, state: RoundState) -> None:
        """Called after each round (and once for round 0, the initial model)."""

    def on_run_end(self, outcome: RunOutcome) -> None:
        """Called once when the loop ends, for whatever reason."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs back (numbers, strings, containers, Flower records)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` gave, when resuming from a checkpoint."""


@dataclass
class ConvergenceMonitor(Callback):
    """Stops the run at a target test accuracy or loss (or the global model's train loss,
    to compare runs at matched training loss), after `patience` evaluations
    without improvement, or when the test loss is no longer finite (diverged).

    Improvement means beating the last improving value by more than `min_delta`: test
    accuracy, or test loss when only a loss target is set. Round 0 sets the baseline.
    `best_*` report the best values seen, `best_round` the round of the best accuracy.
    At the target it also records the optimizer steps and samples spent to reach it: the
    sums over rounds of the mean per replying client (`steps_per_client`,
    `examples_per_client`), the federated counterpart of Shallue et al.'s steps-to-target.
    """

    stop: StopConfig
    best_accuracy: float = -math.inf
    best_loss: float = math.inf
    best_round: int = 0
    rounds_to_target: int | None = None
    virtual_seconds_to_target: float | None = None  # when a virtual clock or stream runs
    steps_to_target: float | None = None
    examples_to_target: float | None = None
    rounds_trained: int = 0  # rounds in which at least one client's update was aggregated
    _steps: float = field(default=0.0, repr=False)
    _examples: float = field(default=0.0, repr=False)
    _baseline: float = field(default=math.nan, repr=False)
    _since_improvement: int = field(default=0, repr=False)

    def state_dict(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if name != "stop"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)

    def _improved(self, accuracy: float, loss: float) -> bool:
        by_loss = self.stop.target_loss is not None and self.stop.target_accuracy is None
        value = -loss if by_loss else accuracy  # larger is better
        if math.isnan(self._baseline) or value > self._baseline + self.stop.min_delta:
            self._baseline = value
            return True
        return False

    def on_round_end(self, state: RoundState) -> None:
        self.rounds_trained += bool(state.row.get("steps_per_client"))
        self._steps += state.row.get("steps_per_client") or 0.0
        self._examples += state.row.get("examples_per_client") or 0.0
        accuracy = state.row.get("test_accuracy")
        loss = state.row.get("test_loss")
        if accuracy is None or loss is None:
            return
        if not math.isfinite(loss):
            state.stop_reason = "diverged"
            return
        self.best_loss = min(self.best_loss, loss)
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_round = accuracy, state.round
        self._since_improvement = (
            0 if self._improved(accuracy, loss) else self._since_improvement + 1
        )
        if state.round == 0:
            return
        target_acc, target_loss = self.stop.target_accuracy, self.stop.target_loss
        target_train, train_loss = self.stop.target_train_loss, state.row.get("global_train_loss")
        reached = None
        if target_acc is not None and accuracy >= target_acc:
            reached = "target_accuracy"
        elif target_loss is not None and loss <= target_loss:
            reached = "target_loss"
        elif target_train is not None and train_loss is not None and train_loss <= target_train:
            reached = "target_train_loss"  # matched training loss (Keskar et al.)
        if reached is not None and self.rounds_to_target is None:
            self.rounds_to_target = state.round
            self.virtual_seconds_to_target = state.row.get("virtual_seconds")
            self.steps_to_target, self.examples_to_target = self._steps, self._examples
        if reached is not None and self.stop.at_target:
            state.stop_reason = reached
        elif self.stop.patience is not None and self._since_improvement >= self.stop.patience:
            state.stop_reason = "patience"
