"""Timestamps of deployed rounds, for the bench case `deployment` (fedbatch/bench/deployment.py).

With `FEDBATCH_TIMING=<file>` in the environment (the launcher's environment reaches its
SuperNodes and, through them, every ClientApp process), each ClientApp process and each
reply wait of the server append one JSON line to `<file>`: wall-clock times
(`time.time()`, comparable on one machine). Without it nothing is measured or written.
Standard library only; `fedbatch.federated` notes when its import began, before torch.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TIMING_ENV = "FEDBATCH_TIMING"
# Where a node worker's timelines go instead of the file at exit (it does not exit).
_collectors: list[list[dict[str, Any]]] = []


def timing_file() -> str | None:
    return os.environ.get(TIMING_ENV) or None


def append(record: dict[str, Any]) -> None:
    """One line, appended in one write (O_APPEND): processes may write at once."""
    path = timing_file()
    if path is None:
        return
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def process_started() -> float | None:
    """When this process started (wall clock, 10 ms ticks; Linux only, else None)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        with open("/proc/uptime", encoding="ascii") as uptime:
            up = float(uptime.read().split()[0])
    except OSError:
        return None
    ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
    return time.time() - (up - ticks / os.sysconf("SC_CLK_TCK"))


class ClientTimeline:
    """A ClientApp process's marks for one message, written when the process exits (so
    that its exit time is in the line), or, inside `collected_timelines()` (a node worker,
    which does not exit per message), handed to the collector. `begin` notes the process
    start and the time fedbatch's imports began (`fedbatch.federated`'s first line)."""

    def __init__(self, fields: dict[str, Any] | None) -> None:
        self.fields = fields

    @classmethod
    def begin(
        cls, message_id: str, message_type: str, imports_started: tuple[float, float]
    ) -> ClientTimeline:
        """`imports_started`: (wall, CPU) times; each mark `m` also notes `m_cpu`, this
        process's CPU seconds, which a busy machine sways less than wall time."""
        if timing_file() is None:
            return cls(None)
        fields: dict[str, Any] = {"kind": "client", "message_id": message_id}
        fields |= {"type": message_type, "process_start": process_started()}
        fields |= {"imports_start": imports_started[0], "imports_start_cpu": imports_started[1]}
        fields |= {"handler": time.time(), "handler_cpu": time.process_time()}
        timeline = cls(fields)
        if _collectors:
            _collectors[-1].append(fields)
        else:
            atexit.register(timeline.write)
        return timeline

    def mark(self, name: str, **values: Any) -> None:
        if self.fields is not None:
            self.fields[name] = time.time()
            self.fields[f"{name}_cpu"] = time.process_time()
            self.fields |= values

    def absorb(self, worker_line: dict[str, Any]) -> None:
        """A node worker's marks for this message, each as `worker_<mark>` (its own
        process's clocks: compare them with each other and with wall-clock marks)."""
        if self.fields is not None:
            own = ("kind", "message_id", "type", "process_start", "imports_start")
            own += ("imports_start_cpu",)
            self.fields |= {f"worker_{k}": v for k, v in worker_line.items() if k not in own}

    def discard(self) -> None:
        """Nothing of this timeline is written."""
        self.fields = None

    def write(self) -> None:
        if self.fields is not None:
            append(self.fields | {"exit": time.time()})
            self.fields = None


@contextmanager
def collected_timelines() -> Iterator[list[dict[str, Any]]]:
    """The lines of the timelines begun inside, kept in the returned list (their marks
    keep arriving until the handler returns) instead of written at exit."""
    lines: list[dict[str, Any]] = []
    _collectors.append(lines)
    try:
        yield lines
    finally:
        _collectors.remove(lines)


def server_exchange(sent_at: float, phase: str, replies: dict[str, float]) -> None:
    """The server's side of one exchange: when it pushed the messages and when each reply
    (by the id of the message it answers) came back."""
    if timing_file() is not None:
        append({"kind": "server", "phase": phase, "sent": sent_at, "replies": replies})
