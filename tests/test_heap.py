"""A process that trains again and again hands the memory it freed back to the operating system."""

from __future__ import annotations

import psutil
import pytest
import torch

from cvm_lightning.heap import release_freed_memory


def test_the_pages_an_experience_freed_go_back_to_the_operating_system():
    if not release_freed_memory():
        pytest.skip("this C library (not glibc) has no malloc_trim")
    process = psutil.Process()
    # 64 KB blocks stay below glibc's mmap threshold, on its heap; every 16th kept alive stops it shrinking by itself.
    blocks = [torch.ones(16_384) for _ in range(4096)]
    kept = blocks[::16]
    del blocks
    held = process.memory_info().rss
    assert release_freed_memory()
    released = held - process.memory_info().rss
    assert released > 128 * 2**20, f"only {released / 2**20:.0f} MB of the 240 MB freed went back"
    assert all(block[0] == 1 for block in kept)
