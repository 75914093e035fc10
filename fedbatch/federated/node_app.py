"""The ClientApp a Flower deployment loads (`[tool.flwr.app.components] clientapp`).

Flower 1.42 runs each message in a fresh `flwr-clientapp` process. This app hands the
message to its SuperNode's worker (`fedbatch.federated.node_worker`, started by the node's
first message), so that torch is imported and the data prepared once a node instead of
once a message; the worker runs `fedbatch.federated.client_app`, which the in-process and
Ray engines call directly. With the node config `worker=false` the message runs in its own
process instead. This module does not import torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedbatch.federated import IMPORTS_STARTED, IMPORTS_STARTED_CPU
from fedbatch.federated.node_worker import (
    FAILED,
    HELLO,
    OK,
    RETIRED,
    WorkerAddress,
    identity,
    receive,
    send,
)
from fedbatch.federated.timing import ClientTimeline

WORKER = "worker"  # node config: false runs every message in its own process
START_SECONDS = 300.0  # a worker's start-up (torch's import) on a slow, busy machine
GONE_SECONDS = 10.0  # a retiring worker's exit


class WorkerUnavailable(RuntimeError):
    """No worker could be reached or started; the message has not been handed over."""


def uses_worker(node_config: dict) -> bool:
    value = node_config.get(WORKER, True)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"node config {WORKER}={value!r} is invalid: allowed true, false")
    return value


def run_in_place(message: Message, context: Context) -> Message:
    from fedbatch.federated.client_app import app as client_app

    return client_app(message, context)


def forwarding_app(address_of: Callable[[], WorkerAddress | None]) -> ClientApp:
    """A ClientApp that hands every message fedbatch's ClientApp answers to the worker at
    `address_of()`; it runs the message itself where that is None, or where its node
    says `worker=false`."""
    forwarder = ClientApp()

    def handle(message: Message, context: Context) -> Message:
        address = address_of()
        if address is None or not uses_worker(context.node_config):
            return run_in_place(message, context)
        metadata = message.metadata
        imports = (IMPORTS_STARTED, IMPORTS_STARTED_CPU)
        timeline = ClientTimeline.begin(metadata.message_id, metadata.message_type, imports)
        try:
            reply, state, worker_lines = NodeWorker(address).run(message, context)
        except WorkerUnavailable as error:  # slower, not wrong: this process runs it
            print(f"fedbatch: {error}; this message runs in its own process", file=sys.stderr)
            timeline.discard()  # the handler run here notes its own
            return run_in_place(message, context)
        context.state = state
        for line in worker_lines:
            timeline.absorb(line)
        timeline.mark("returned")
        return reply

    for register in (forwarder.train(), forwarder.evaluate(), forwarder.query()):
        register(handle)
    forwarder.query("describe")(handle)
    return forwarder


def worker_of_this_node() -> WorkerAddress | None:
    """In a `flwr-clientapp` process (one a message), the worker of the SuperExec that
    started it: one worker serves all of a node's messages. Elsewhere (Flower's
    simulation runs ClientApps in processes that live on) none."""
    if Path(sys.argv[0]).stem != "flwr-clientapp":
        return None
    return WorkerAddress.for_parent(os.getppid())


app = forwarding_app(worker_of_this_node)


class NodeWorker:
    """This SuperNode's worker, as one message's process sees it: connected to, started
    when there is none (one process at a time, under a file lock), replaced when it runs
    another app version."""

    def __init__(self, address: WorkerAddress) -> None:
        self.address = address

    def run(self, message: Message, context: Context) -> tuple[Message, object, list[dict]]:
        request = (identity(), message, context)
        answer = self._exchange(request)
        if answer[0] == RETIRED:  # it ran another version: it has left, a new one starts
            self._wait_gone()
            answer = self._exchange(request)
        if answer[0] == FAILED:
            _, pickled, text, worker_traceback = answer
            error = pickle.loads(pickled) if pickled is not None else RuntimeError(text)
            error.add_note(f"raised in fedbatch's node worker:\n{worker_traceback}")
            raise error
        if answer[0] != OK:
            raise RuntimeError(f"fedbatch's node worker answered {answer[0]!r}")
        return answer[1], answer[2], answer[3]

    def _exchange(self, request: tuple) -> tuple:
        with self._connection() as channel:
            send(channel, request)
            try:
                return receive(channel)
            except (EOFError, OSError):
                raise RuntimeError(
                    "fedbatch's node worker ended while handling this message (its error, "
                    "if any, is in this SuperNode's log); the next message starts a new one"
                ) from None

    def _connection(self) -> socket.socket:
        """A connection the worker has greeted; a worker is started if none listens."""
        try:
            self.address.make_directory()
            with self.address.lock_file.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                return self._connect() or self._start()
        except OSError as error:  # e.g. no writable temporary directory, a path too long
            raise WorkerUnavailable(f"no node worker ({error})") from None

    def _connect(self) -> socket.socket | None:
        """A greeted connection, or None: no worker listens (any more)."""
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            channel.connect(str(self.address.socket))
            if receive(channel) == HELLO:
                return channel
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # none, or a dead one's socket
        except (ConnectionError, EOFError):
            self._wait_gone()  # one leaving (idle, or retired) without a word
        channel.close()
        return None

    def _start(self) -> socket.socket:
        self.address.socket.unlink(missing_ok=True)  # a dead worker's
        self.address.prune()
        command = [sys.executable, "-P", "-m", "fedbatch.federated.node_worker"]
        command += ["--directory", str(self.address.directory)]
        command += ["--parent", str(self.address.parent_pid), "--identity", json.dumps(identity())]
        path = os.pathsep.join(entry for entry in sys.path if entry)  # the installed FAB's too
        process = subprocess.Popen(
            command, env=os.environ | {"PYTHONPATH": path}, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_SECONDS
        while (channel := self._connect()) is None:
            if process.poll() is not None:
                raise WorkerUnavailable(
                    f"fedbatch's node worker exited at start (code {process.returncode}); "
                    "its error is in this SuperNode's log"
                )
            if time.monotonic() > deadline:
                process.kill()
                raise WorkerUnavailable(
                    f"fedbatch's node worker did not start in {START_SECONDS:.0f} s"
                )
            time.sleep(0.02)
        return channel

    def _wait_gone(self) -> None:
        """Until a leaving worker has removed its socket (a dead one's stays: `_start`
        removes it)."""
        deadline = time.monotonic() + GONE_SECONDS
        while self.address.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
