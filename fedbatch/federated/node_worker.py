"""A SuperNode's worker: one Python process per SuperNode that outlives Flower's messages.

Flower 1.42 starts a fresh `flwr-clientapp` process for every message, which would import
torch and prepare the data again each time. fedbatch's ClientApp component
(`fedbatch.federated.node_app`) hands each message to this worker instead. The node's first
message starts it; it imports torch and the real ClientApp once, keeps its workloads (data,
model builders) between messages and runs each message with the code the in-process engines
run. Message and Context travel pickled over a Unix socket in a directory only this user can
enter (and, on Linux, only from processes of this user); the Context's state comes back with
each reply, so nothing lives in the worker alone.

The worker exits when the process that starts the node's ClientApps (Flower's SuperExec) is
gone, after `IDLE_SECONDS` without a message, or when a message of another app version
(another installed FAB, another interpreter) arrives: a fresh worker takes over then. Each
connection opens with the worker's `HELLO`: a process that connects while the worker is
leaving sees the connection end before it, sends nothing, and starts a new worker.
Standard library only until `serve` imports the ClientApp.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbatch.federated.timing import collected_timelines

IDLE_SECONDS = 900.0
WATCH_SECONDS = 0.5

# A connection: the worker sends HELLO, the process sends (identity, message, context),
# the worker answers one of:
HELLO = ("hello",)
OK = "ok"  # (OK, reply message, context state, timeline lines of the handler)
FAILED = "failed"  # (FAILED, pickled exception or None, "Type: text", worker traceback)
RETIRED = "retired"  # (RETIRED,): another app version asked; this worker is leaving
_LENGTH = struct.Struct("!Q")


def identity() -> list[str]:
    """What must match for a worker to run this process's code: the interpreter and the
    import path (Flower puts the installed FAB's directory on it)."""
    return [sys.executable, *sys.path]


def send(channel: socket.socket, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    channel.sendall(_LENGTH.pack(len(data)))
    channel.sendall(data)


def receive(channel: socket.socket) -> Any:
    """The next value; EOFError if the other side closed before sending it whole."""
    (length,) = _LENGTH.unpack(_receive_exactly(channel, _LENGTH.size))
    return pickle.loads(_receive_exactly(channel, length))


def _receive_exactly(channel: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view, filled = memoryview(buffer), 0
    while filled < size:
        count = channel.recv_into(view[filled:])
        if count == 0:
            raise EOFError("the connection closed")
        filled += count
    return buffer


@dataclass(frozen=True)
class WorkerAddress:
    """The files of the worker serving the ClientApp processes of one SuperExec."""

    directory: Path
    parent_pid: int

    @classmethod
    def for_parent(cls, parent_pid: int) -> WorkerAddress:
        return cls(Path(tempfile.gettempdir()) / f"fedbatch-workers-{os.getuid()}", parent_pid)

    @property
    def socket(self) -> Path:
        return self.directory / f"node-{self.parent_pid}.sock"

    @property
    def lock_file(self) -> Path:
        return self.directory / f"node-{self.parent_pid}.lock"

    def make_directory(self) -> None:
        """The directory, this user's alone (0700): refused if someone else owns it."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        info = self.directory.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise PermissionError(
                f"{self.directory} must belong to this user alone (mode 0700) to hold "
                "fedbatch's node workers"
            )

    def prune(self) -> None:
        """Remove the files of workers whose SuperExec is gone (a killed worker cannot
        remove its socket; lock files stay after every worker)."""
        for path in self.directory.glob("node-*.*"):
            pid = path.stem.removeprefix("node-")
            if pid.isdigit() and int(pid) != self.parent_pid and not _alive(int(pid)):
                path.unlink(missing_ok=True)


def answer(app: Any, request: tuple[Any, ...], own_identity: list[str]) -> tuple[Any, ...]:
    """Run one message through `app` (the real ClientApp) as its own process would."""
    asked_identity, message, context = request
    if asked_identity != own_identity:
        return (RETIRED,)
    try:
        with collected_timelines() as lines:
            reply = app(message, context)
    except Exception as error:  # the ClientApp's failure: raised again in the node's process
        return (FAILED, _pickled(error), f"{type(error).__name__}: {error}", traceback.format_exc())
    return (OK, reply, context.state, lines)


def _pickled(error: Exception) -> bytes | None:
    """The exception, if it survives pickling (custom ones may not rebuild)."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
    except Exception:
        return None
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's (the pid was reused)
        return True
    return True


def _watch_parent(parent_pid: int, socket_path: Path) -> None:
    """Exit as soon as the SuperExec is gone, even in the middle of a message."""
    while _alive(parent_pid):
        time.sleep(WATCH_SECONDS)
    socket_path.unlink(missing_ok=True)
    os._exit(0)


def _same_user(channel: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):  # not Linux: the 0700 directory guards alone
        return True
    credentials = channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid == os.getuid()


def serve(address: WorkerAddress, own_identity: list[str]) -> None:
    from fedbatch.federated.client_app import app  # torch and the real ClientApp, once

    watch = (address.parent_pid, address.socket)
    threading.Thread(target=_watch_parent, args=watch, daemon=True).start()
    address.socket.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(address.socket))
        server.listen()
        server.settimeout(WATCH_SECONDS)
        last_done = time.monotonic()
        while True:
            try:
                channel, _ = server.accept()
            except TimeoutError:
                if time.monotonic() - last_done > IDLE_SECONDS:
                    break
                continue
            with channel:
                retired = _serve_one(channel, app, own_identity)
            last_done = time.monotonic()
            if retired:
                break
        # Leaving: no new connection reaches it; one waiting unanswered sees no HELLO.
        address.socket.unlink(missing_ok=True)


def _serve_one(channel: socket.socket, app: Any, own_identity: list[str]) -> bool:
    """One connection's message; True if the worker retires."""
    channel.settimeout(None)
    if not _same_user(channel):
        return False
    try:
        send(channel, HELLO)
        request = receive(channel)
    except (OSError, EOFError):
        return False
    response = answer(app, request, own_identity)
    try:
        send(channel, response)
    except (OSError, pickle.PicklingError) as error:
        print(f"fedbatch node worker: could not send a reply: {error}", file=sys.stderr)
    return response[0] == RETIRED


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedbatch.federated.node_worker")
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--parent", type=int, required=True, help="the SuperExec's pid")
    parser.add_argument("--identity", required=True, help="JSON: whose code this worker runs")
    args = parser.parse_args(argv)
    serve(WorkerAddress(args.directory, args.parent), json.loads(args.identity))


if __name__ == "__main__":
    main()
