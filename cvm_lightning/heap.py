"""Freed memory handed back to the operating system between experiences.

glibc's ``malloc`` keeps the pages that a training step frees, for the next
requests of their size. Experiences of other shapes (a new class, a larger
update) ask for other sizes, so a process that updates its model again and
again grows by tens of MB an update while its live tensors do not grow.
``malloc_trim`` returns the free pages. Other C libraries (macOS, Windows,
musl) have no such call, and this is a no-op there.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Callable


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the operating system; whether this C library can."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # 0: keep no free space at the top of the heap either
    return True
