"""Convergence monitoring on sequences of test metrics."""

from __future__ import annotations

import math

from fedbatch.config import StopConfig
from fedbatch.metrics.callbacks import ConvergenceMonitor, RoundState


def _feed(monitor, accuracies, losses=None):
    """Rounds 0, 1, ... until the monitor stops; returns (rounds run, reason)."""
    losses = losses or [1.0 - a for a in accuracies]
    for round_, (acc, loss) in enumerate(zip(accuracies, losses, strict=True)):
        state = RoundState(round_, None, {"test_accuracy": acc, "test_loss": loss})
        monitor.on_round_end(state)
        if state.stop_reason:
            return round_, state.stop_reason
    return len(accuracies) - 1, None


def test_target_accuracy_stops_at_the_first_round_reaching_it():
    monitor = ConvergenceMonitor(StopConfig(target_accuracy=0.8))
    assert _feed(monitor, [0.1, 0.5, 0.81, 0.9]) == (2, "target_accuracy")
    assert monitor.rounds_to_target == 2


def test_a_target_recorded_without_stopping_keeps_its_first_round():
    monitor = ConvergenceMonitor(StopConfig(target_accuracy=0.8, at_target=False))
    assert _feed(monitor, [0.1, 0.5, 0.81, 0.7, 0.9]) == (4, None)
    assert monitor.rounds_to_target == 2 and monitor.best_round == 4


def test_round_zero_never_stops_the_run():
    assert _feed(ConvergenceMonitor(StopConfig(target_accuracy=0.1)), [0.2, 0.3]) == (
        1,
        "target_accuracy",
    )


def test_patience_counts_evaluations_without_improvement():
    monitor = ConvergenceMonitor(StopConfig(patience=2))
    assert _feed(monitor, [0.1, 0.5, 0.6, 0.6, 0.55, 0.9]) == (4, "patience")
    assert monitor.best_accuracy == 0.6 and monitor.best_round == 2


def test_slow_steady_progress_beats_min_delta_in_total():
    # +0.004 per round with min_delta 0.005: every second round beats the baseline.
    accuracies = [0.5 + 0.004 * i for i in range(12)]
    monitor = ConvergenceMonitor(StopConfig(patience=3, min_delta=0.005))
    assert _feed(monitor, accuracies) == (11, None)


def test_loss_is_the_criterion_when_only_a_loss_target_is_set():
    monitor = ConvergenceMonitor(StopConfig(target_loss=0.01, patience=2))
    accuracies = [0.5, 0.5, 0.5, 0.5, 0.5]
    losses = [2.0, 1.0, 0.5, 0.6, 0.7]
    assert _feed(monitor, accuracies, losses) == (4, "patience")
    assert monitor.best_loss == 0.5


def test_non_finite_loss_stops_as_diverged():
    monitor = ConvergenceMonitor(StopConfig())
    assert _feed(monitor, [0.1, 0.3, 0.1], [2.0, 1.5, math.nan]) == (2, "diverged")


def test_target_train_loss_stops_at_the_global_models_train_loss():
    """Matched training loss: the run stops where `global_train_loss` first reaches the
    target, and records the steps summed so far (hand-summed: 3 rounds of 10)."""
    monitor = ConvergenceMonitor(StopConfig(target_train_loss=0.4))
    stopped = None
    for round_, train in enumerate([None, 0.9, 0.5, 0.35, 0.2]):
        row = {"test_accuracy": 0.5, "test_loss": 1.0, "global_train_loss": train}
        state = RoundState(round_, None, row | ({"steps_per_client": 10.0} if round_ else {}))
        monitor.on_round_end(state)
        if state.stop_reason:
            stopped = (round_, state.stop_reason)
            break
    assert stopped == (3, "target_train_loss")
    assert (monitor.rounds_to_target, monitor.steps_to_target) == (3, 30.0)
