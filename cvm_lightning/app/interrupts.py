"""Ctrl-C and SIGTERM: the command stops where it is, says how to go on, and exits ``128 + signal``.

Both signals raise :class:`Interrupted`, which is not a ``KeyboardInterrupt``:
Lightning turns a ``KeyboardInterrupt`` inside ``fit`` into ``sys.exit(1)``
(or an early return), which would read as an error, or as a finished
experience. Any other exception goes through Lightning's teardown and on
up, as it does through Avalanche's loop, to the command line, which prints
one line. Every file is written atomically, so what an interrupted command
leaves is what it had finished. A signal that arrives while a module is
imported waits until that import is done.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How soon a signal that arrived during an import is sent again.
RESEND_SECONDS = 0.05


class Interrupted(BaseException):
    """A command was stopped by ``signum``; ``next_step`` says how to go on (``None``: run it again)."""

    def __init__(self, signum: int, next_step: str | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.next_step = next_step

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


def _importing(frame) -> bool:
    """Whether ``frame`` runs inside an import (a module's body, or the import system itself)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise(signum: int, frame) -> None:
    if _importing(frame):
        # An exception that leaves a module half-run breaks every later import of it (numpy's C core cannot load
        # twice), and libraries that catch it import again; so the signal comes back once the import is done.
        later = threading.Timer(RESEND_SECONDS, os.kill, (os.getpid(), signum))
        later.daemon = True
        later.start()
        return
    for other in SIGNALS:  # a second Ctrl-C must not break the cleanup (a lock's release, Lightning's teardown)
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted`; the handlers before it come back after."""
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _raise)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted_line(stop: BaseException) -> tuple[str, int]:
    """The one line a stopped command prints, and its exit code (a bare ``KeyboardInterrupt`` is a Ctrl-C)."""
    if not isinstance(stop, Interrupted):
        stop = Interrupted(signal.SIGINT)
    step = stop.next_step or "nothing was left half-written; run the same command again"
    return f"cvm: interrupted; {step}", stop.exit_code
