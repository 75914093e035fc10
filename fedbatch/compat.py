"""Every use of a library's internals, in one place (flwr 1.42.0, hydra-core 1.3.8).

fedbatch leans on a few things Flower and Hydra do not promise to keep: how a `Message`
learns its sender, how its id is stored, how an `Array` lays out its fields, how
`FedAvg.aggregate_train` is built, that Flower's Ray backend uses a Ray already running,
how Hydra's basic sweeper expands a sweep, and the environment variable that sets how
often a SuperNode's SuperExec looks for work. Each
lives here, small and named for what it does, and each has a guard test in
`tests/unit/test_compat.py` that checks the behaviour fedbatch relies on (not just that the
name exists), so an upgrade that changes one fails there, not halfway through a run.
Nothing here assigns to an attribute of a library's module: every change stays in
fedbatch's own objects (or, for `set_sender_identity`, goes through Flower's own setter).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable
from typing import Any

from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

# Not exported by `flwr.app`/`flwr.serverapp`, but part of what a Grid speaks: `Run` is
# the type of `Grid.set_run`/`Grid.run`, `ErrorCode` the codes of an `Error` reply, and
# `SUPERLINK_NODE_ID` the node id of the server side. Guard tests: `Grid.set_run` takes
# this `Run` and `Run.create_empty` keeps its id; the codes keep their wire values; a
# server message's sender is node 1.
__all__ = [
    "SUPERLINK_NODE_ID",
    "ErrorCode",
    "FedAvgWithMeanHook",
    "Run",
    "fast_array",
    "set_message_id",
    "set_sender_identity",
    "sweep_jobs",
]


def set_sender_identity(run_id: int, node_id: int = SUPERLINK_NODE_ID, task_id: int = 1) -> None:
    """Make every `Message(...)` built in this process come from `node_id` of `run_id`.

    Flower's `Message` constructor reads its sender (`run_id`, `src_node_id`,
    `src_task_id`) from the process-wide `flwr.supercore.task_identity.TaskIdentity`,
    which Flower's own runtimes set when a task starts (flwr 1.42.0; e.g.
    `flwr.server.compat.app` sets task 1 of the SuperLink's node). An engine that builds
    messages itself must set it too. A plain setter, not a context manager: the identity
    must hold for as long as the engine's Grid lives, across the whole round loop. Guard:
    a message built afterwards carries these ids.
    """
    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id


def set_message_id(message: Message, message_id: str) -> None:
    """Give `message` its id, as a SuperLink does when the message is pushed.

    `Metadata.message_id` is read-only; Flower's own grids and link state write the field
    behind it, `metadata.__dict__["_message_id"]` (flwr 1.42.0). Guard: the id reads back
    and a reply built with `Message(..., reply_to=message)` refers to it.
    """
    message.metadata.__dict__["_message_id"] = message_id


def fast_array(dtype: str, shape: tuple[int, ...], stype: str, data: bytes) -> Array:
    """`Array(dtype=dtype, shape=shape, stype=stype, data=data)`, without its argument
    dispatch and per-field `__setattr__` (twice per client per round, so it shows).

    Fills the dataclass's fields and its `_is_dirty` flag directly, as `Array.__init__`
    leaves them (flwr 1.42.0). Guard: equal to Flower's own `Array` field by field, in
    `__dict__`, in `object_id`, and through `deflate`/`inflate`.
    """
    array = Array.__new__(Array)
    array.__dict__.update(dtype=dtype, shape=shape, stype=stype, data=data)
    array.__dict__["_is_dirty"] = True
    return array


class FedAvgWithMeanHook(FedAvg):
    """Flower's FedAvg whose `aggregate_train` takes the weighted mean of the clients'
    arrays from `average_arrays`, a hook Flower's FedAvg does not have.

    Flower's `FedAvg.aggregate_train` calls the module-level `aggregate_arrayrecords`
    directly; this is that method (flwr 1.42.0), line for line, with the call going through
    `self.average_arrays` instead, so a subclass swaps the mean without touching Flower's
    module (a user's own FedAvg in the same process keeps Flower's). It also uses FedAvg's
    private `_check_and_log_replies`. With the default hook it behaves as Flower's FedAvg.
    Guard: with the default hook, the same arrays, metrics and errors as Flower's FedAvg on
    valid, failed, empty and inconsistent replies; and the source of
    `FedAvg.aggregate_train` is still the one copied here.
    """

    average_arrays = staticmethod(aggregate_arrayrecords)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate ArrayRecords and MetricRecords in the received Messages."""
        valid_replies, _ = self._check_and_log_replies(replies, is_train=True)
        arrays, metrics = None, None
        if valid_replies:
            reply_contents = [msg.content for msg in valid_replies]
            arrays = self.average_arrays(reply_contents, self.weighted_by_key)
            metrics = self.train_metrics_aggr_fn(reply_contents, self.weighted_by_key)
        return arrays, metrics


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for these command-line overrides.

    The cartesian product of each key's values (`a=1,2 b=x,y`, `range(...)`), in the
    order the sweeper runs them, each job a list of `key=value` strings. Hydra keeps the
    sweeper in `hydra._internal` (its `BasicSweeper.split_arguments`, hydra-core 1.3.8);
    this builds the same jobs from the public override parser. A sweep the basic sweeper
    cannot enumerate (`interval(...)`) raises `HydraException`, as it does there. Guard:
    the same jobs as `BasicSweeper.split_arguments` for lists, ranges, plain values,
    repeated keys and `+`/`~` prefixes, and the same refusal of an interval.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    values: dict[str, list[str]] = {}  # a key given twice keeps its place, takes the last
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            kind = getattr(override.value_type, "name", override.value_type)
            raise HydraException(f"the basic sweeper cannot enumerate a {kind} sweep")
    return [list(job) for job in itertools.product(*values.values())]


def start_ray(init_args: dict[str, Any]) -> None:
    """Start Ray here, as Flower's Ray backend would (`RayBackend.init_ray`, which leaves a
    running Ray as it is): its workers get this process's import path."""
    import ray

    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
    ray.init(runtime_env=runtime_env, include_dashboard=False, **init_args)


# A SuperNode's SuperExec looks for a message to start a ClientApp process for once a
# second by default (flwr/supercore/superexec/run_superexec.py reads this variable; it is
# not in Flower's documentation), so each deployed round waited half of that on average
# before its clients started. One look is one loopback request.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
