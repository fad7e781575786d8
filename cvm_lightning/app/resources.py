"""Measuring resource use: peak resident memory of a block of code."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak_mb`` after the block.

    ``with PeakRSS() as peak: work()`` then ``peak.peak_mb``. Sampling every
    ``interval`` seconds can miss spikes shorter than that.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._process.memory_info().rss / 2**20)
