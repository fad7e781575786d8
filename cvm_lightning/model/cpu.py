"""How the model's arithmetic runs: bfloat16 autocast (CPU or GPU) and the CPU's intra-op thread count.

:mod:`cvm_lightning.hardware` says what this CPU can do; this module acts on it with torch.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def autocast(precision: str, device_type: str = "cpu") -> ContextManager:
    """The autocast context of ``precision`` on ``device_type`` (a no-op for ``32-true``)."""
    if precision != "bf16-mixed":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (``None`` keeps torch's default, one per core); returns the count in use.

    Processes that share the cores should split them: two runs of 2 threads
    each on 2 cores oversubscribe, and each runs several times slower than
    with 1 thread each.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
