"""A finished run's ending: exit code and sweep status from its summary."""

from __future__ import annotations

import pytest

from fedbatch.config import StopConfig
from fedbatch.metrics.callbacks import ConvergenceMonitor, RoundState
from fedbatch.metrics.endings import EXIT_DIVERGED, EXIT_NO_TRAINING, failure


@pytest.mark.parametrize(
    ("summary", "status", "code"),
    [
        ({"stopped_because": "rounds", "rounds_completed": 5, "rounds_trained": 5}, None, 0),
        ({"stopped_because": "target_accuracy", "rounds_completed": 2, "rounds_trained": 1},
         None, 0),
        ({"stopped_because": "patience", "rounds_completed": 9, "rounds_trained": 9}, None, 0),
        ({"stopped_because": "diverged", "rounds_completed": 3, "rounds_trained": 3},
         "diverged", EXIT_DIVERGED),
        ({"stopped_because": "all_clients_failed", "rounds_completed": 1, "rounds_trained": 0},
         "no_training", EXIT_NO_TRAINING),
        # every client crashed or was offline each round: rounds "done", nothing trained
        ({"stopped_because": "rounds", "rounds_completed": 4, "rounds_trained": 0},
         "no_training", EXIT_NO_TRAINING),
        ({"stopped_because": "rounds", "rounds_completed": 4}, None, 0),  # an older summary
        # Ctrl-C: resumable, so neither finished nor failed; the shell's code for SIGINT
        ({"stopped_because": "interrupted", "rounds_completed": 3, "rounds_trained": 3},
         "interrupted", 130),
    ],
)  # fmt: skip
def test_what_counts_as_doing_what_was_asked(summary, status, code):
    ended = failure(summary)
    assert (ended and ended.status, ended.exit_code if ended else 0) == (status, code)
    if ended:
        assert "\n" not in ended.message


def test_rounds_trained_counts_rounds_with_an_aggregated_update():
    monitor = ConvergenceMonitor(StopConfig())
    for number, steps in enumerate((None, 10.0, None, 0.0, 4.0)):
        monitor.on_round_end(RoundState(number, None, {"steps_per_client": steps}))
    assert monitor.rounds_trained == 2
