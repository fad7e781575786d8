import pytest
import pytorch_lightning as pl
import torch

from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.metrics.avalanche_plugin import AccuracyMatrixPlugin
from cvm_lightning.model import CVMModule
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.training import CVMStrategy, LightningStreamAdapter

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


def lightning_run(bank, digits, epochs):
    pl.seed_everything(0)
    module = CVMModule(bank, **SMALL)
    callback = ContinualMetricsCallback(digits.n_experiences)
    adapter = LightningStreamAdapter(
        module, epochs=epochs, batch_size=32, callbacks=[callback], logger=False,
        enable_progress_bar=False, enable_checkpointing=False,
    )
    adapter.fit_stream(digits.train_stream, digits.test_stream)
    return module, adapter, callback.matrix.compute()


def avalanche_run(bank, digits, epochs):
    pl.seed_everything(0)
    module = CVMModule(bank, **SMALL)
    recorder = AccuracyMatrixPlugin(digits.n_experiences)
    strategy = CVMStrategy(model=module, train_mb_size=32, train_epochs=epochs, eval_mb_size=256, plugins=[recorder], evaluator=None)
    for experience in digits.train_stream:
        strategy.train(experience)
        strategy.eval(digits.test_stream)
    return module, recorder.matrix.compute()


@pytest.mark.slow
def test_lightning_adapter_and_avalanche_strategy_agree(digit_bank, digits):
    module, adapter, R_lightning = lightning_run(digit_bank, digits, epochs=3)
    _, R_avalanche = avalanche_run(digit_bank, digits, epochs=3)
    # The adapter trained every experience for `epochs` epochs on one Trainer.
    assert adapter.trainer.current_epoch == 15
    assert module.seen.all() and len(module.replay) == 60
    assert not torch.isnan(R_lightning).any()
    # Chance on experience i is 1 / (2i + 2); the asymmetric loss trades some of this for less forgetting.
    assert torch.all(torch.diagonal(R_lightning) > 0.5), "each experience is learned when it arrives"
    assert torch.all(R_lightning.triu(1) == 0), "class-incremental: unseen classes are never predicted"
    final_l, final_a = R_lightning[-1].mean().item(), R_avalanche[-1].mean().item()
    assert final_l > 0.4 and final_a > 0.4
    assert abs(final_l - final_a) < 0.15, (final_l, final_a)


def test_empty_experience_is_a_clear_error(digit_bank, digits):
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience

    empty = DatasetExperience(dataset=digits.train_stream[0].dataset.subset([]))
    adapter = LightningStreamAdapter(CVMModule(digit_bank, **SMALL), epochs=1, logger=False, enable_progress_bar=False)
    with pytest.raises(DataError, match="empty"):
        adapter.fit_experience(empty, index=0)


def test_nan_loss_keeps_the_last_checkpoint_and_names_the_step(digit_bank, digits, tmp_path):
    from cvm_lightning.errors import TrainingDivergedError

    adapter = LightningStreamAdapter(
        CVMModule(digit_bank, **SMALL), epochs=1, checkpoint_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    adapter.fit_experience(digits.train_stream[0], 0)
    adapter.evaluate(digits.test_stream)
    adapter.position.next_experience = 1
    saved = adapter.checkpoints.save(adapter.trainer, 0)
    before = saved.read_bytes()
    torch.nn.init.constant_(adapter.module.head.proj.weight, float("inf"))  # the loss diverges at the next step
    with pytest.raises(TrainingDivergedError, match="experience 1, step"):
        adapter.fit_experience(digits.train_stream[1], 1)
    assert saved.read_bytes() == before, "the last good checkpoint is untouched"
    resumed = LightningStreamAdapter(
        CVMModule(digit_bank, **SMALL), epochs=1, checkpoint_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    assert resumed.resume() == 1


def test_checkpoint_of_another_backbone_is_refused(digit_bank, digits, tmp_path):
    adapter = LightningStreamAdapter(
        CVMModule(digit_bank, **SMALL), epochs=1, checkpoint_dir=tmp_path, logger=False, enable_progress_bar=False
    )
    adapter.fit_experience(digits.train_stream[0], 0)
    adapter.checkpoints.save(adapter.trainer, 0)
    other = CVMModule(digit_bank, **{**SMALL, "backbone": "reduced_resnet18"})
    mismatched = LightningStreamAdapter(other, epochs=1, checkpoint_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="another backbone or concept bank"):
        mismatched.resume()
    assert (tmp_path / "experience-0.ckpt").is_file()
