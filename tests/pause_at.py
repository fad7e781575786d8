"""Run ``cvm ARGS`` with one method made to pause, so a test can send a signal at that exact point.

``python tests/pause_at.py MODULE:CLASS.METHOD N MARKER -- ARGS``: the N-th
call of the method touches the file MARKER, then sleeps; the test waits for
MARKER and sends its signal, which lands inside that call. ``-`` as the
method touches MARKER as the command starts, with its interpreter up, and
pauses nothing: a test times its signal from there, not from the spawn,
which a loaded machine can make slower than any fixed delay. SIGINT starts
at its default disposition, as in a terminal (a shell's background job
would ignore it).
"""

from __future__ import annotations

import functools
import importlib
import signal
import sys
import time
from pathlib import Path


def pause_at(target: str, call: int, marker: Path) -> None:
    module_name, attribute = target.split(":")
    owner_name, method_name = attribute.split(".")
    owner = getattr(importlib.import_module(module_name), owner_name)
    original = getattr(owner, method_name)
    calls = 0

    @functools.wraps(original)
    def paused(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == call:
            marker.touch()
            time.sleep(60)  # the signal ends this sleep
        return original(*args, **kwargs)

    setattr(owner, method_name, paused)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    target, call, marker, separator, *args = sys.argv[1:]
    assert separator == "--"
    if target == "-":
        Path(marker).touch()
    else:
        pause_at(target, int(call), Path(marker))
    from cvm_lightning.app.cli import main

    sys.exit(main(args))
