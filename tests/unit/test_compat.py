"""Guards of fedbatch/compat.py: one per library internal, each checking the behaviour
fedbatch relies on, so a Flower or Hydra upgrade that changes it fails here first."""

from __future__ import annotations

import hashlib
import inspect
import textwrap

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import FedAvg
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from fedbatch.compat import (
    SUPERLINK_NODE_ID,
    ErrorCode,
    FedAvgWithMeanHook,
    Run,
    fast_array,
    set_message_id,
    set_sender_identity,
    sweep_jobs,
)
from tests.flower_messages import same_arrays, train_replies


@pytest.mark.parametrize(("run_id", "node_id", "task_id"), [(7, SUPERLINK_NODE_ID, 1), (9, 4, 2)])
def test_a_message_comes_from_the_identity_set(run_id, node_id, task_id):
    set_sender_identity(run_id, node_id, task_id)
    msg = Message(RecordDict({"config": ConfigRecord({"a": 1})}), 3, "train")
    meta = msg.metadata
    assert (meta.run_id, meta.src_node_id, meta.src_task_id) == (run_id, node_id, task_id)
    assert meta.dst_node_id == 3
    set_sender_identity(1)  # the in-process engine's default: the SuperLink's node
    assert Message(RecordDict(), 3, "train").metadata.src_node_id == SUPERLINK_NODE_ID == 1


def test_a_message_id_reads_back_and_replies_refer_to_it():
    set_sender_identity(1)
    msg = Message(RecordDict(), 3, "train")
    assert msg.metadata.message_id == ""  # set by whoever delivers it
    set_message_id(msg, "42")
    assert msg.metadata.message_id == "42"
    reply = Message(RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "42"
    assert (reply.metadata.src_node_id, reply.metadata.dst_node_id) == (3, 1)
    error = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"), reply_to=msg)
    assert error.metadata.reply_to_message_id == "42"


@pytest.mark.parametrize(
    "values",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array(2.5),
        np.arange(5, dtype=np.int64),
        np.ones((2, 1, 3), dtype=np.float16),
    ],
)
def test_a_fast_array_is_flowers_array(values):
    flowers = Array(values)
    ours = fast_array(flowers.dtype, flowers.shape, flowers.stype, flowers.data)
    assert isinstance(ours, Array)
    assert ours == flowers  # the dataclass's fields
    assert ours.__dict__ == flowers.__dict__  # and nothing else set, or missing
    assert ours.is_dirty and ours.object_id == flowers.object_id
    assert ours.deflate() == flowers.deflate()
    assert ours.children is not None and ours.children.keys() == flowers.children.keys()
    assert Array.inflate(ours.deflate(), ours.children) == flowers  # what ships arrives
    np.testing.assert_array_equal(ours.numpy(), values)


def test_run_and_error_codes_are_what_a_grid_speaks():
    assert inspect.signature(Grid.set_run).parameters["run"].annotation is Run
    assert Run.create_empty(5).run_id == 5
    # Error codes travel as integers; fedbatch's engines use these two.
    assert ErrorCode.CLIENT_APP_RAISED_EXCEPTION == 2
    assert ErrorCode.REPLY_MESSAGE_UNAVAILABLE == 4
    assert Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom").code == 2


# Flower 1.42.0's `FedAvg.aggregate_train`, which FedAvgWithMeanHook copies. A new hash
# means Flower changed it: compare the two, update the copy, then this hash.
FEDAVG_AGGREGATE_TRAIN_SHA256 = "3424a352ab68ceb188a9c11f7a47e4fa5dc9a1cb92fd6b125c682129423630d5"


def test_the_copied_aggregate_train_is_still_flowers():
    source = textwrap.dedent(inspect.getsource(FedAvg.aggregate_train))
    assert hashlib.sha256(source.encode()).hexdigest() == FEDAVG_AGGREGATE_TRAIN_SHA256


@pytest.mark.parametrize(("sizes", "failed"), [((7, 1, 12), 0), ((5, 5), 2), ((), 0), ((), 3)])
def test_the_mean_hook_aggregates_as_flowers_fedavg(sizes, failed):
    ours, flowers = FedAvgWithMeanHook(), FedAvg()
    arrays, metrics = ours.aggregate_train(1, train_replies(0, sizes, failed))
    their_arrays, their_metrics = flowers.aggregate_train(1, train_replies(0, sizes, failed))
    assert same_arrays(arrays, their_arrays)
    assert metrics == their_metrics
    assert (arrays is None) == (not sizes)


def test_the_mean_hook_refuses_inconsistent_replies_as_flowers_fedavg():
    def inconsistent() -> list[Message]:
        replies = train_replies(0, (3, 4))
        del replies[1].content["metrics"]["num-examples"]
        return replies

    with pytest.raises(InconsistentMessageReplies) as theirs:
        FedAvg().aggregate_train(1, inconsistent())
    with pytest.raises(InconsistentMessageReplies) as ours:
        FedAvgWithMeanHook().aggregate_train(1, inconsistent())
    assert str(ours.value) == str(theirs.value)


def test_the_mean_hook_is_the_one_called():
    calls = []

    class Counting(FedAvgWithMeanHook):
        @staticmethod
        def average_arrays(records, key):
            calls.append(len(records))
            return FedAvgWithMeanHook.average_arrays(records, key)

    Counting().aggregate_train(1, train_replies(0, (2, 3, 4), failed=1))
    assert calls == [3]  # once, over the replies with content


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["a=1,2", "b=x,y,z"],
        ["a=range(1,4)", "b=10"],
        ["i=range(0,1,0.25)", "h=choice(1,2)"],
        ["a=1", "b=2", "a=3,4"],  # a repeated key keeps its place and takes the last
        ["+c=1,2", "~d", "++e=f"],
        ["e='x,y'", "f=[1,2]", "g={a:1}", "n=null", "r=1.50"],
        ["client.batch_size=1,8,full", "strategy=fedavg,fedprox", "seed=range(0,3)"],
    ],
)
def test_sweep_jobs_are_the_basic_sweepers(overrides):
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert sweep_jobs(overrides) == BasicSweeper.split_arguments(parsed, None)[0]


@pytest.mark.parametrize("overrides", [["a=interval(0,1)"], ["a=1,2", "db=glob(*)"]])
def test_sweeps_the_basic_sweeper_cannot_enumerate_are_refused(overrides):
    parsed = OverridesParser.create().parse_overrides(overrides)
    with pytest.raises(HydraException):
        BasicSweeper.split_arguments(parsed, None)
    with pytest.raises(HydraException):
        sweep_jobs(overrides)


def test_flowers_ray_backend_leaves_a_running_ray_as_it_is(monkeypatch):
    """fedbatch starts Ray itself (compat.start_ray) to keep its signal handlers: Flower's
    backend must not call ray.init again when Ray is running."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append((a, k)))
    RayBackend.init_ray(object.__new__(RayBackend), {"init_args": {}})
    assert calls == []


@pytest.mark.parametrize("seconds", ["0.1", "0.5"])
def test_superexec_reads_its_poll_interval_from_the_variable(monkeypatch, seconds):
    """`deploy local` shortens the SuperExec's look for work through this variable."""
    from flwr.supercore.superexec import run_superexec

    from fedbatch.compat import SUPEREXEC_POLL_ENV

    monkeypatch.setenv(SUPEREXEC_POLL_ENV, seconds)
    assert run_superexec._get_task_poll_interval() == float(seconds)
    monkeypatch.delenv(SUPEREXEC_POLL_ENV)
    assert run_superexec._get_task_poll_interval() == 1.0
