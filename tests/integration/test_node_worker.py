"""A SuperNode's worker process (`fedbatch.federated.node_app`, `node_worker`): the same
numbers as the ClientApp run in place, one process for all of a node's messages, errors
raised as they were, replaced when the app changes, gone with its node."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedbatch.compat import set_message_id, set_sender_identity
from fedbatch.engine.inprocess import InProcessGrid
from fedbatch.federated import node_app
from fedbatch.federated.node_app import NodeWorker, forwarding_app
from fedbatch.federated.node_worker import WorkerAddress
from fedbatch.federated.server_app import run_experiment
from tests.conftest import read_rows, tiny_config, without_measured

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


@pytest.fixture
def address(tmp_path: Path) -> Iterator[WorkerAddress]:
    """A worker address whose "SuperExec" is a sleeping process, killed at the end."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield WorkerAddress(tmp_path / "workers", parent.pid)
    parent.kill()
    parent.wait()


def worker_pids(address: WorkerAddress) -> list[int]:
    """Live worker processes serving `address` (their command line names its directory)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        named = b"fedbatch.federated.node_worker" in command
        if named and str(address.directory).encode() in command and status != "Z":
            found.append(int(proc.name))
    return found


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_runs_through_one_worker_give_the_in_process_numbers_and_errors(tmp_path, address):
    # Crashing clients (errors carried back), kept optimizer state (context.state carried
    # back and forth), three rounds of three of six clients.
    cfg = tiny_config(faults={"crash": 0.3}, client={"optimizer": "adam", "lr": 0.01})
    cfg_kept = tiny_config(client={"optimizer": "adam", "lr": 0.01, "optimizer_state": "keep"})
    app = forwarding_app(lambda: address)
    for name, config in (("crash", cfg), ("kept", cfg_kept)):
        run_experiment(InProcessGrid(6, client_app=app), config, tmp_path / name, progress=False)
        run_experiment(InProcessGrid(6), config, tmp_path / f"{name}-here", progress=False)
        worked = without_measured(read_rows(tmp_path / name))
        assert worked == without_measured(read_rows(tmp_path / f"{name}-here"))
    errors = [row["client_error"] for row in read_rows(tmp_path / "crash") if row["client_error"]]
    assert errors and all("RuntimeError: injected fault (faults.crash)" in e for e in errors)
    assert len(worker_pids(address)) == 1  # every message of both runs


def test_a_failing_message_raises_its_own_error_with_the_worker_s_traceback(address):
    set_sender_identity(1)
    message = Message(RecordDict({"config": ConfigRecord()}), 2, "query.nothing")
    set_message_id(message, "m1")
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="No query function registered with name 'nothing'") as e:
        NodeWorker(address).run(message, context)
    assert "raised in fedbatch's node worker" in "".join(e.value.__notes__)


def describe(address: WorkerAddress, partition: int = 4) -> int:
    set_sender_identity(1)
    message = Message(RecordDict({"config": ConfigRecord()}), 2, "query.describe")
    set_message_id(message, f"describe-{partition}")
    node = {"partition-id": partition, "num-partitions": 6}
    context = Context(run_id=1, node_id=2, node_config=node, state=RecordDict(), run_config={})
    reply = NodeWorker(address).run(message, context)[0]
    return int(reply.content["metrics"]["partition-id"])


def test_a_worker_of_another_app_version_retires_for_a_new_one(address, monkeypatch):
    assert describe(address) == 4
    (first,) = worker_pids(address)
    monkeypatch.setattr(node_app, "identity", lambda: ["another interpreter", *sys.path])
    assert describe(address, partition=5) == 5
    assert wait_for(lambda: first not in worker_pids(address))
    assert len(worker_pids(address)) == 1


def test_a_dead_worker_s_socket_is_replaced_and_the_worker_leaves_with_its_node(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    address = WorkerAddress(tmp_path / "workers", parent.pid)
    address.make_directory()
    address.socket.write_bytes(b"")  # a crashed worker's leftover
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a SuperExec that has exited: its worker's files are removed
    leftovers = [address.directory / f"node-{gone.pid}.{kind}" for kind in ("sock", "lock")]
    for leftover in leftovers:
        leftover.write_bytes(b"")
    assert describe(address) == 4
    assert len(worker_pids(address)) == 1
    assert not any(leftover.exists() for leftover in leftovers)
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not worker_pids(address))  # exited (here: our zombie child)
    assert not address.socket.exists()


class NodesSayingNoWorker(InProcessGrid):
    """Nodes whose `--node-config` says `worker=false`."""

    def __init__(self, address: WorkerAddress) -> None:
        super().__init__(6, client_app=forwarding_app(lambda: address))
        for context in self.contexts.values():
            context.node_config["worker"] = "false"


def test_a_node_saying_worker_false_runs_its_messages_in_place(tmp_path, address):
    cfg = tiny_config(rounds=1)
    run_experiment(NodesSayingNoWorker(address), cfg, tmp_path / "no-worker", progress=False)
    run_experiment(InProcessGrid(6), cfg, tmp_path / "here", progress=False)
    assert without_measured(read_rows(tmp_path / "no-worker")) == without_measured(
        read_rows(tmp_path / "here")
    )
    assert worker_pids(address) == [] and not address.directory.exists()


def test_where_no_worker_can_start_the_message_runs_in_place_with_a_warning(
    tmp_path, address, capfd
):
    address.directory.mkdir(mode=0o755)  # not this user's alone: refused
    address.directory.chmod(0o755)
    grid = InProcessGrid(6, client_app=forwarding_app(lambda: address))
    run_experiment(grid, tiny_config(rounds=1), tmp_path, progress=False)
    assert read_rows(tmp_path)[-1]["clients_replied"] == 3
    assert "must belong to this user alone (mode 0700)" in capfd.readouterr().err
    assert worker_pids(address) == []


def test_a_node_config_worker_value_other_than_true_or_false_is_one_clear_error():
    with pytest.raises(ValueError, match="node config worker='maybe' is invalid: allowed true"):
        node_app.uses_worker({"worker": "maybe"})
    assert node_app.uses_worker({}) and not node_app.uses_worker({"worker": False})
