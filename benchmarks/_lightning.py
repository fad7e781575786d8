"""Shared by the benchmark scripts that time Lightning training steps."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from torch.utils.data import DataLoader


class StepTimer(pl.Callback):
    """Wall time of each training batch after the first ``skip`` (warm-up)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.durations, self._start = skip, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.skip:
            self.durations.append(time.perf_counter() - self._start)


def images_per_second(module: pl.LightningModule, loader: DataLoader, steps: int, precision: str = "32-true") -> float:
    """Training images/s of ``module`` in a Lightning Trainer over ``steps`` timed steps (after 3 of warm-up)."""
    timer = StepTimer(skip=3)
    trainer = pl.Trainer(max_steps=steps + 3, accelerator="cpu", precision=precision, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer])
    trainer.fit(module, loader)
    return loader.batch_size * len(timer.durations) / sum(timer.durations)
