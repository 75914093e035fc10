"""How a run ended: did it do what was asked? One answer for the exit code of
`python -m fedbatch.simulate` and for a sweep job's status in sweep.csv.

A run did what was asked when it completed its rounds, reached a `stop` target, or stopped
on a `stop.patience` plateau, with at least one client's update aggregated. It did not
when its test loss stopped being finite (`diverged`) or when no client's update was ever
aggregated (`no_training`: every client failed, crashed, was offline or fit no step).
Ctrl-C and SIGTERM end a run as `interrupted`, with the shell's codes 130 and 143.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # a config or override refused before anything ran
EXIT_DIVERGED = 3
EXIT_NO_TRAINING = 4
INTERRUPTED = "interrupted"
LOST = "lost"  # a deployment's run that ended before its summary came back (trackers only)


@dataclass(frozen=True)
class Failure:
    status: str  # sweep.csv's status for the job
    exit_code: int
    message: str  # one line


def failure(summary: dict[str, Any]) -> Failure | None:
    """Why a finished run (its summary.json) did not do what was asked, or None."""
    stopped = summary.get("stopped_because")
    if stopped == INTERRUPTED:
        return Failure(
            INTERRUPTED,
            128 + signal.SIGINT,
            f"interrupted after {summary.get('rounds_completed')} rounds",
        )
    if stopped == "diverged":
        return Failure(
            "diverged",
            EXIT_DIVERGED,
            f"the run diverged after {summary.get('rounds_completed')} rounds "
            "(test loss not finite): try a smaller client.lr",
        )
    trained = summary.get("rounds_trained")
    if stopped == "all_clients_failed" or (trained == 0 and summary.get("rounds_completed")):
        cause = summary.get("client_error") or "every client crashed, was offline or fit no step"
        return Failure(
            "no_training", EXIT_NO_TRAINING, f"no client's update was aggregated: {cause}"
        )
    return None
