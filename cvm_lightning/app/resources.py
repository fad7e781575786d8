"""Measuring resource use: peak resident memory of a block of code, and each experience's time and memory."""

from __future__ import annotations

import threading
import time

import psutil
import pytorch_lightning as pl


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


class ExperienceCost:
    """Each experience's training seconds and the process's peak resident memory (MB) while it trained.

    ``start(k)`` and ``stop()`` around each stretch of experience ``k``'s
    training; several stretches of one experience (its epochs) add up.
    """

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.peak_mb: list[float] = []
        self._running: tuple[int, float, PeakRSS] | None = None

    def start(self, experience: int) -> None:
        while len(self.seconds) <= experience:
            self.seconds.append(0.0)
            self.peak_mb.append(0.0)
        peak = PeakRSS()
        peak.__enter__()  # closed by stop(), which may come from another hook
        self._running = (experience, time.perf_counter(), peak)

    def stop(self) -> None:
        if self._running is None:
            return
        experience, began, peak = self._running
        peak.__exit__(None, None, None)
        self.seconds[experience] = round(self.seconds[experience] + time.perf_counter() - began, 3)
        self.peak_mb[experience] = round(max(self.peak_mb[experience], peak.peak_mb), 1)
        self._running = None


class ExperienceCostCallback(pl.Callback):
    """:class:`ExperienceCost` of a Lightning run whose epochs ``[k E, (k + 1) E)`` train experience ``k``.

    It times training epochs only (validation runs between them), and its
    figures travel in the checkpoints, so a resumed run keeps those of the
    experiences trained before it stopped.
    """

    def __init__(self, epochs_per_experience: int) -> None:
        self.epochs_per_experience = epochs_per_experience
        self.cost = ExperienceCost()

    def state_dict(self) -> dict:
        return {"seconds": self.cost.seconds, "peak_mb": self.cost.peak_mb}

    def load_state_dict(self, state_dict: dict) -> None:
        self.cost.seconds, self.cost.peak_mb = list(state_dict["seconds"]), list(state_dict["peak_mb"])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cost.start(trainer.current_epoch // self.epochs_per_experience)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cost.stop()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cost.stop()
