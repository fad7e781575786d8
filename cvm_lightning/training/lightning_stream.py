"""Feeds an Avalanche stream into Lightning, one experience after another."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from cvm_lightning.data import experience_loader
from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.model import CVMModule
from cvm_lightning.settings import check_settings
from cvm_lightning.training.checkpoints import ExperienceCheckpoints, StreamPosition, save_atomically, set_rng_state


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

    With ``checkpoint_dir``, the run is checkpointed atomically after each
    experience's evaluation (see :mod:`cvm_lightning.training.checkpoints`)
    and :meth:`fit_stream` resumes from the newest readable checkpoint there.

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
        checkpoint_dir: Path | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        check_settings({"epochs": epochs, "batch_size": batch_size})
        self.module = module
        self.epochs = epochs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        trainer_kwargs.setdefault("num_sanity_val_steps", 0)
        trainer_kwargs.setdefault("enable_model_summary", False)
        self.position = StreamPosition()
        trainer_kwargs["callbacks"] = [*trainer_kwargs.get("callbacks", []), self.position]
        self.trainer = pl.Trainer(max_epochs=0, **trainer_kwargs)
        self.checkpoints = ExperienceCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None

    @property
    def train_seconds(self) -> float:
        """Seconds spent in ``trainer.fit`` so far (carried over on resume)."""
        return self.position.train_seconds

    def _loader(self, dataset, train: bool, experience: int = 0) -> DataLoader:
        return experience_loader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, train=train,
            seed=int(self.module.hparams.get("seed", 0)), experience=experience, num_workers=self.num_workers,
        )

    def fit_experience(self, experience, index: int | None = None) -> None:
        """Continue training on one Avalanche training experience."""
        index = experience.current_experience if index is None else index
        if len(experience.dataset) == 0:
            raise DataError(f"Training experience {index} is empty: every experience needs at least one sample.")
        self.module.start_experience(sorted(experience.classes_in_this_experience), index)
        self.trainer.fit_loop.max_epochs = self.trainer.current_epoch + self.epochs
        start = time.perf_counter()
        self.trainer.fit(self.module, self._loader(experience.dataset.train(), train=True, experience=index))
        self.position.train_seconds += time.perf_counter() - start

    def evaluate(self, test_stream: Sequence) -> list[dict[str, float]]:
        """Validate on every test experience (one dataloader each)."""
        loaders = [self._loader(exp.dataset.eval(), train=False) for exp in test_stream]
        return self.trainer.validate(self.module, loaders, verbose=False)

    def fit_stream(self, train_stream: Sequence, test_stream: Sequence) -> None:
        """Learn each training experience in turn, evaluating (and checkpointing) after each."""
        for index in range(self.resume(), len(train_stream)):
            self.fit_experience(train_stream[index], index)
            self.evaluate(test_stream)
            self.position.next_experience = index + 1
            if self.checkpoints is not None:
                self.checkpoints.save(self.trainer, index)

    def save_final(self, path: Path) -> Path:
        """Checkpoint the trained model at ``path`` (atomically); every process must call this."""
        save_atomically(self.trainer, Path(path))
        self.trainer.strategy.barrier("cvm-final")
        return Path(path)

    def resume(self) -> int:
        """Restore the newest checkpoint of ``checkpoint_dir``; returns the next experience to train."""
        checkpoint = self.checkpoints.latest() if self.checkpoints is not None else None
        if checkpoint is None:
            return 0
        try:
            self.module.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as err:
            raise ConfigError(
                f"{checkpoint['cvm_path']} was saved by a model with another backbone or concept bank "
                f"({str(err).splitlines()[0]}). Resume with the configuration that made it, or use a new output folder."
            ) from err
        self.module.on_load_checkpoint(checkpoint)
        saved = checkpoint.get("callbacks", {})
        for callback in self.trainer.callbacks:
            if callback.state_key in saved:
                callback.load_state_dict(saved[callback.state_key])
        if self.position.saved_rng is not None:
            set_rng_state(self.position.saved_rng)
        return self.position.next_experience
