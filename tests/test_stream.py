import pytest
import pytorch_lightning as pl
import torch

from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.metrics.avalanche_plugin import AccuracyMatrixPlugin
from cvm_lightning.model import CVMModule
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.training import (
    AtomicCheckpointIO,
    CVMStrategy,
    ExperienceSchedule,
    experience_checkpoints,
    fit_resumable,
)
from cvm_lightning.training.checkpoints import latest_checkpoint

SMALL = {"backbone": "mobilenetv3_small_050", "in_chans": 1, "input_size": 16, "buffer_size": 60}


@pytest.fixture(scope="module")
def digits():
    return build_benchmark("split-digits", StreamConfig(seed=0))


def test_split_digits_is_five_class_incremental_experiences(digits):
    assert digits.n_experiences == 5 and digits.classes_per_experience == [2] * 5
    seen = [c for exp in digits.train_stream for c in exp.classes_in_this_experience]
    assert sorted(seen) == list(range(10))
    other = build_benchmark("split-digits", StreamConfig(seed=1))
    assert [e.classes_in_this_experience for e in other.train_stream] != [
        e.classes_in_this_experience for e in digits.train_stream
    ], "the seed shuffles the class order"
    x, y, task = digits.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8) and task == 0


def test_benchmark_errors_name_the_fix():
    with pytest.raises(ConfigError, match="split-digits"):
        build_benchmark("split-digit")
    with pytest.raises(ConfigError, match="divisor"):
        build_benchmark("split-digits", StreamConfig(n_experiences=3))


def stream_trainer(digits, epochs, checkpoint_dir=None, *callbacks):
    dm = ClassIncrementalDataModule.from_benchmark(digits, epochs_per_experience=epochs, batch_size=32)
    metrics = ContinualMetricsCallback()
    saving = [experience_checkpoints(checkpoint_dir, epochs)] if checkpoint_dir is not None else []
    trainer = pl.Trainer(
        callbacks=[ExperienceSchedule(), metrics, *saving, *callbacks],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=bool(saving),
        enable_model_summary=False,
        max_epochs=dm.max_epochs,
    )
    return dm, trainer, metrics


def lightning_run(bank, digits, epochs):
    pl.seed_everything(0)
    module = CVMModule(bank, **SMALL)
    dm, trainer, metrics = stream_trainer(digits, epochs)
    trainer.fit(module, datamodule=dm)
    return module, trainer, metrics.matrix.compute()


def avalanche_run(bank, digits, epochs):
    pl.seed_everything(0)
    module = CVMModule(bank, **SMALL)
    recorder = AccuracyMatrixPlugin(digits.n_experiences)
    strategy = CVMStrategy(
        model=module, train_mb_size=32, train_epochs=epochs, eval_mb_size=256, plugins=[recorder], evaluator=None
    )
    for experience in digits.train_stream:
        strategy.train(experience)
        strategy.eval(digits.test_stream)
    return module, recorder.matrix.compute()


@pytest.mark.slow
def test_one_lightning_fit_and_the_avalanche_strategy_agree(digit_bank, digits):
    module, trainer, R_lightning = lightning_run(digit_bank, digits, epochs=3)
    _, R_avalanche = avalanche_run(digit_bank, digits, epochs=3)
    # One fit trained every experience for `epochs` epochs.
    assert trainer.current_epoch == 15
    assert module.seen.all() and len(module.replay) == 60
    assert not torch.isnan(R_lightning).any()
    # Chance on experience i is 1 / (2i + 2); the asymmetric loss trades some of this for less forgetting.
    assert torch.all(torch.diagonal(R_lightning) > 0.5), "each experience is learned when it arrives"
    assert torch.all(R_lightning.triu(1) == 0), "class-incremental: unseen classes are never predicted"
    final_l, final_a = R_lightning[-1].mean().item(), R_avalanche[-1].mean().item()
    assert final_l > 0.4 and final_a > 0.4
    assert abs(final_l - final_a) < 0.15, (final_l, final_a)


def test_empty_experience_is_a_clear_error(digits):
    from dataclasses import replace
    from types import SimpleNamespace

    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience

    empty = DatasetExperience(dataset=digits.train_stream[0].dataset.subset([]))
    scenario = SimpleNamespace(train_stream=[empty, *digits.train_stream[1:]], test_stream=digits.test_stream)
    dm = ClassIncrementalDataModule.from_benchmark(replace(digits, scenario=scenario))
    with pytest.raises(DataError, match="empty"):
        dm.train_dataloader_of(0)


class DivergeAt(pl.Callback):
    """Makes the loss infinite from the first batch of ``epoch`` on."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            torch.nn.init.constant_(pl_module.head.proj.weight, float("inf"))


def test_nan_loss_keeps_the_last_checkpoint_and_names_the_step(digit_bank, digits, tmp_path):
    from cvm_lightning.errors import TrainingDivergedError

    dm, trainer, _ = stream_trainer(digits, 1, tmp_path, DivergeAt(1))
    with pytest.raises(TrainingDivergedError, match="experience 1, step"):
        trainer.fit(CVMModule(digit_bank, **SMALL), datamodule=dm)
    assert [p.name for p in tmp_path.iterdir()] == ["experience-0.ckpt"], (
        "the last good checkpoint is kept, nothing half-written"
    )
    assert latest_checkpoint(tmp_path).name == "experience-0.ckpt"


def test_checkpoint_of_another_backbone_is_refused(digit_bank, digits, tmp_path):
    dm, trainer, _ = stream_trainer(digits, 1, tmp_path, DivergeAt(1))
    with pytest.raises(Exception):
        trainer.fit(CVMModule(digit_bank, **SMALL), datamodule=dm)
    other = CVMModule(digit_bank, **{**SMALL, "backbone": "reduced_resnet18"})
    dm, trainer, _ = stream_trainer(digits, 1, tmp_path)
    with pytest.raises(ConfigError, match="another backbone or concept bank"):
        fit_resumable(trainer, other, dm, tmp_path)
    assert (tmp_path / "experience-0.ckpt").is_file()
