"""Ctrl-C and SIGTERM during a run: saved, not lost.

Within `interruptible()`, SIGINT and SIGTERM raise `Interrupted` where the main thread is,
which in the in-process engines is inside the round loop: the loop saves the last
completed round's state and ends the run as `interrupted` (round_loop.run_rounds).
Where the loop runs in another thread (Ray's simulation runs the ServerApp in one), a
signal only asks it to stop (`deferred=True`); the loop asks `stop_requested()` after each
round and stops there.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during a run. A BaseException, as KeyboardInterrupt is: a client's
    `except Exception` (a counted failure) must not swallow it."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number  # what a shell reports: 130 (SIGINT), 143 (SIGTERM)


class _Request:
    """A deferred run's pending signal, if any (set in the main thread, read in the loop's),
    and the handler in force."""

    signal_number: int | None = None
    handler: Callable[[int, object], None] | None = None


def stop_requested() -> None:
    """Raise `Interrupted` if a signal asked a deferred run to stop."""
    if _Request.signal_number is not None:
        raise Interrupted(_Request.signal_number)


@contextlib.contextmanager
def interruptible(*, deferred: bool = False) -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise `Interrupted` (or, `deferred`, ask the loop to stop
    after its round). Only the main thread can set handlers: elsewhere nothing changes.
    The handlers before are restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signal_number: int, frame: object) -> None:
        if not deferred:
            raise Interrupted(signal_number)
        if _Request.signal_number is None:
            name = signal.Signals(signal_number).name
            print(f"fedbatch: {name}: stopping after this round", file=sys.stderr)
            _Request.signal_number = signal_number

    previous = {sig: signal.signal(sig, interrupt) for sig in SIGNALS}
    _Request.handler = interrupt
    try:
        yield
    finally:
        _Request.signal_number, _Request.handler = None, None
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reclaim_signals() -> None:
    """Put `interruptible`'s handlers back after a library replaced them (`ray.init` sets
    its own, which end the process without saving anything)."""
    if _Request.handler is not None and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _Request.handler)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Within: SIGINT and SIGTERM are ignored (saving a checkpoint after the first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
