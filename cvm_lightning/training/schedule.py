"""``ExperienceSchedule``: the callback that makes one ``trainer.fit`` learn a whole stream."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from cvm_lightning.errors import ConfigError


class ExperienceSchedule(pl.Callback):
    """Drives a :class:`~cvm_lightning.data.ClassIncrementalDataModule` stream inside one ``fit``.

    At setup it sets the Trainer's ``max_epochs`` (the stream's),
    ``reload_dataloaders_every_n_epochs`` (1: the data module hands back the
    same loader within an experience) and ``check_val_every_n_epoch``
    (``epochs_per_experience``), so the data module switches experiences
    and every experience ends with a validation on all test experiences,
    which :class:`~cvm_lightning.metrics.ContinualMetricsCallback` records as
    one row of the accuracy matrix. With the data module's ``eval_every``,
    the experiences in between skip that validation, and with it their
    checkpoint: a resumed run restarts after the last evaluated experience.

    At the start of each experience it marks the experience's classes as seen
    (``start_experience``), clears the optimiser state and restarts the
    learning-rate schedule, as a fresh optimiser per experience would. After
    the experience's last training batch it calls the module's
    ``end_experience``, which re-estimates BatchNorm statistics (when
    ``recalibrate_bn`` is on, averaged across processes under DDP) and
    updates the class prototypes (when they are on), before Lightning
    validates. The progress bar shows the
    experience, and each validation logs it as ``experience``, which
    :func:`~cvm_lightning.training.experience_checkpoints` names its files by.

    A task-free data module (``mini_experience_size``) tells no one where an
    experience ends: the schedule then sets one epoch, the single pass, and
    calls no experience hook; CVM's seen classes grow from batch labels, and
    :class:`~cvm_lightning.metrics.task_free.TaskFreeEvaluation` scores the run.
    """

    task_free = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "experience_at"):
            raise ConfigError(
                "ExperienceSchedule needs trainer.fit(model, datamodule=ClassIncrementalDataModule(...)); "
                "with plain dataloaders, call start_experience and fit once per experience instead."
            )
        self.task_free = bool(getattr(datamodule, "task_free", False))
        if self.task_free:  # nothing to schedule: one pass, and no experience hook (TaskFreeEvaluation scores it)
            trainer.fit_loop.max_epochs = datamodule.max_epochs
            return
        epochs = datamodule.epochs_per_experience
        trainer.fit_loop.max_epochs = datamodule.max_epochs
        # Every epoch, not every experience: Lightning counts a reload's period from the epoch a resumed
        # run was saved in, one before the epoch it trains next, so a period of E would switch late.
        trainer.reload_dataloaders_every_n_epochs = 1
        trainer.check_val_every_n_epoch = epochs

    def _experience(self, trainer: pl.Trainer) -> int:
        return trainer.datamodule.experience_at(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.task_free:
            return
        datamodule = trainer.datamodule
        experience = self._experience(trainer)
        if trainer.current_epoch % datamodule.epochs_per_experience == 0:
            pl_module.start_experience(datamodule.classes_of(experience), experience=experience)
            self._fresh_optimizers(trainer, pl_module)
            # Lightning validates after epoch e when (e + 1) % check_val_every_n_epoch == 0, read live:
            # a period longer than the stream skips this experience's evaluation.
            evaluate = datamodule.evaluates_after(experience)
            trainer.check_val_every_n_epoch = datamodule.epochs_per_experience if evaluate else trainer.max_epochs + 1
        pl_module.log("experience", float(experience), prog_bar=True, on_step=False, on_epoch=True, sync_dist=False)

    @staticmethod
    def _fresh_optimizers(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"])
        for config in trainer.lr_scheduler_configs:
            if hasattr(pl_module, "build_scheduler"):
                config.scheduler = pl_module.build_scheduler(config.scheduler.optimizer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not self.task_free:
            pl_module.log("experience", float(self._experience(trainer)), on_epoch=True, sync_dist=False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.task_free:
            return
        datamodule = trainer.datamodule
        last_epoch = (trainer.current_epoch + 1) % datamodule.epochs_per_experience == 0
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        if last_epoch and last_batch:
            pl_module.end_experience()
