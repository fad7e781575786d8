"""Feeds an Avalanche stream into Lightning, one experience after another."""

from __future__ import annotations

import time
from typing import Any, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from cvm_lightning.errors import DataError
from cvm_lightning.model import CVMModule


class LightningStreamAdapter:
    """Trains one :class:`CVMModule` on a stream with one Lightning ``Trainer``.

    For each training experience it marks the experience's classes as seen,
    raises ``fit_loop.max_epochs`` by ``epochs`` and calls ``trainer.fit`` on
    that experience's data (so the global step, loggers and checkpoint
    callbacks carry on across experiences), then runs ``trainer.validate`` on
    every test experience, in order (dataloader ``j`` = test experience
    ``j``), which is where metric callbacks record the accuracy matrix.
    ``configure_optimizers`` runs at every ``fit``: each experience starts
    with fresh optimiser moments, as in Avalanche's strategies.

    Extra keyword arguments go to ``pl.Trainer`` (callbacks, logger,
    accelerator, devices, strategy, ...).
    """

    def __init__(
        self,
        module: CVMModule,
        *,
        epochs: int = 5,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        **trainer_kwargs: Any,
    ) -> None:
        if epochs < 1:
            raise DataError(f"epochs must be >= 1, got {epochs}.")
        self.module = module
        self.epochs = epochs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        trainer_kwargs.setdefault("num_sanity_val_steps", 0)
        trainer_kwargs.setdefault("enable_model_summary", False)
        self.trainer = pl.Trainer(max_epochs=0, **trainer_kwargs)
        self.train_seconds = 0.0

    def _loader(self, dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def fit_experience(self, experience, index: int | None = None) -> None:
        """Continue training on one Avalanche training experience."""
        index = experience.current_experience if index is None else index
        if len(experience.dataset) == 0:
            raise DataError(f"Training experience {index} is empty: every experience needs at least one sample.")
        self.module.start_experience(sorted(experience.classes_in_this_experience), index)
        self.trainer.fit_loop.max_epochs = self.trainer.current_epoch + self.epochs
        start = time.perf_counter()
        self.trainer.fit(self.module, self._loader(experience.dataset.train(), train=True))
        self.train_seconds += time.perf_counter() - start

    def evaluate(self, test_stream: Sequence) -> list[dict[str, float]]:
        """Validate on every test experience (one dataloader each)."""
        loaders = [self._loader(exp.dataset.eval(), train=False) for exp in test_stream]
        return self.trainer.validate(self.module, loaders, verbose=False)

    def fit_stream(self, train_stream: Sequence, test_stream: Sequence) -> None:
        """Learn each training experience in turn, evaluating after each."""
        for index, experience in enumerate(train_stream):
            self.fit_experience(experience, index)
            self.evaluate(test_stream)
