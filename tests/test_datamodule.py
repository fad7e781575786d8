"""One ``trainer.fit(model, datamodule=...)`` learns a whole stream, the Lightning way."""

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from cvm_lightning import ConceptBank, CVMModule
from cvm_lightning.app.cli import main
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.errors import ConfigError
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.training import (
    AtomicCheckpointIO,
    ExperienceSchedule,
    RunState,
    experience_checkpoints,
    fit_resumable,
)

SMALL = dict(backbone="reduced_resnet18", in_chans=1, input_size=16, buffer_size=60)


def _module(dm: ClassIncrementalDataModule) -> CVMModule:
    bank = ConceptBank.from_names(dm.class_names, text_model="random")
    return CVMModule(bank, **SMALL)


class StopAfter(pl.Callback):
    """Ends the fit after ``experience``'s validation, as a crash right after its checkpoint would."""

    def __init__(self, experience: int) -> None:
        self.experience = experience

    def on_validation_end(self, trainer, pl_module):
        if pl_module.current_experience == self.experience:
            trainer.should_stop = True


def _stream_trainer(dm, root, *extra):
    metrics = ContinualMetricsCallback()
    trainer = pl.Trainer(
        callbacks=[ExperienceSchedule(), metrics, RunState(), experience_checkpoints(root / "ckpt", 1), *extra],
        plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, max_epochs=dm.max_epochs,
    )
    return trainer, metrics


def test_one_fit_trains_every_experience_and_a_resumed_fit_ends_identically(tmp_path):
    dm = ClassIncrementalDataModule("split-digits", epochs_per_experience=1, train_per_class=30)
    pl.seed_everything(0)
    model = _module(dm)
    trainer, metrics = _stream_trainer(dm, tmp_path / "whole")
    assert fit_resumable(trainer, model, dm, tmp_path / "whole" / "ckpt") is None
    assert trainer.current_epoch == dm.max_epochs == 5
    assert bool(model.seen.all()) and model.current_experience == 4
    one_fit = metrics.matrix.compute()
    assert not torch.isnan(one_fit.tril()).any(), "every experience ended with a validation row"
    assert sorted(p.name for p in (tmp_path / "whole" / "ckpt").iterdir()) == ["experience-3.ckpt", "experience-4.ckpt"]

    pl.seed_everything(0)
    first, _ = _stream_trainer(dm, tmp_path / "cut", StopAfter(1))
    fit_resumable(first, _module(dm), dm, tmp_path / "cut" / "ckpt")
    assert first.current_epoch == 2
    torch.manual_seed(123)  # a resumed process starts from other generator states
    second, resumed_metrics = _stream_trainer(dm, tmp_path / "cut")
    resumed_model = _module(dm)
    assert fit_resumable(second, resumed_model, dm, tmp_path / "cut" / "ckpt").name == "experience-1.ckpt"
    assert second.current_epoch == 5
    torch.testing.assert_close(resumed_metrics.matrix.compute(), one_fit, rtol=0, atol=0)
    torch.testing.assert_close(resumed_model.head.proj.weight, model.head.proj.weight, rtol=0, atol=0)


def test_the_schedule_needs_the_data_module():
    dm = ClassIncrementalDataModule("split-digits", epochs_per_experience=1, train_per_class=5)
    model = _module(dm)
    trainer = pl.Trainer(callbacks=[ExperienceSchedule()], logger=False, enable_progress_bar=False, max_epochs=1)
    with pytest.raises(ConfigError, match="datamodule=ClassIncrementalDataModule"):
        trainer.fit(model, torch.utils.data.DataLoader(dm.benchmark.train_stream[0].dataset.train(), batch_size=8))


@pytest.mark.parametrize("bad", [{"epochs_per_experience": 0}, {"batch_size": 0}, {"n_experiences": 0}])
def test_bad_data_module_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        ClassIncrementalDataModule("split-digits", **bad)


def test_without_shuffled_classes_the_stream_keeps_label_order():
    fixed = ClassIncrementalDataModule("split-digits", seed=3, shuffle_classes=False)
    assert [fixed.classes_of(k) for k in range(5)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    shuffled = ClassIncrementalDataModule("split-digits", seed=3)
    assert [shuffled.classes_of(k) for k in range(5)] != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_drop_last_leaves_out_each_experiences_short_batch_and_refuses_an_experience_without_one():
    from cvm_lightning.errors import DataError

    keep = ClassIncrementalDataModule("split-digits", batch_size=64, train_per_class=40)
    drop = ClassIncrementalDataModule("split-digits", batch_size=64, train_per_class=40, drop_last=True)
    assert [len(batch[0]) for batch in keep.train_dataloader_of(0)] == [64, 16]
    assert [len(batch[0]) for batch in drop.train_dataloader_of(0)] == [64]
    assert len(list(drop.val_dataloader()[0])) == len(list(keep.val_dataloader()[0])), "test batches are all kept"
    with pytest.raises(DataError, match="fewer than a batch of 100, so --drop-last would leave it no batch"):
        ClassIncrementalDataModule("split-digits", batch_size=100, train_per_class=40, drop_last=True).benchmark


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses(config, capsys):
    assert main(["fit", "--config", str(config), "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "benchmark:" in printed and "backbone: reduced_resnet18" in printed


def test_cvm_fit_trains_the_stream_from_a_config(tmp_path):
    config = next(c for c in CONFIGS if c.stem == "split_digits")
    assert main(["fit", "--config", str(config), "--data.epochs_per_experience", "1", "--data.train_per_class", "10",
                 "--model.input_size", "16", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(tmp_path)]) == 0
    run = next(tmp_path.rglob("accuracy_matrix.json"))
    saved = json.loads(run.read_text())
    assert len(saved["accuracy_matrix"]) == 5 and all(v is not None for v in saved["accuracy_matrix"][4])
    assert (run.parent / "config.yaml").is_file() and list(run.parent.rglob("*.ckpt")), (
        "Lightning's config and checkpoint"
    )


@pytest.mark.parametrize("args,fix", [
    (["--config", "{yaml}"], "does not accept option 'model.bogus_key'"),
    (["--model.bogus_key", "3"], "unrecognized arguments: --model.bogus_key"),
    (["--model.lr", "abc"], 'Parser key "model.lr"'),
    (["--data.epochs_per_experience", "0"], "must be an integer >= 1"),
    (["--model.lr", "-1"], "--lr must be a number > 0"),
])
def test_bad_config_values_are_one_line(args, fix, tmp_path, capsys):
    bad_yaml = tmp_path.parent / f"{tmp_path.name}-bad.yaml"
    bad_yaml.write_text("model:\n  bogus_key: 3\n")
    args = [a.replace("{yaml}", str(bad_yaml)) for a in args]
    assert main(["fit", "--trainer.default_root_dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvm: error: ") and fix in err[0], err
    assert not list(tmp_path.rglob("*")), "nothing written"


def _own_datasets(per_class: int, channels: int = 3, dtype=torch.float32):
    """A torchvision-style dataset of (image, label) pairs: 4 classes whose brightness tells them apart."""
    from torch.utils.data import TensorDataset

    y = torch.arange(4).repeat(per_class)
    x = (torch.rand(len(y), channels, 16, 16, generator=torch.Generator().manual_seed(per_class)) * 0.2
         + y.view(-1, 1, 1, 1) / 5).clamp(0, 1)
    if dtype == torch.uint8:
        x = (x * 255).to(torch.uint8)
    return TensorDataset(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_from_datasets_streams_your_own_dataset_end_to_end(dtype):
    names = ["cat", "dog", "car", "ship"]
    dm = ClassIncrementalDataModule.from_datasets(
        _own_datasets(30, dtype=dtype), _own_datasets(10, dtype=dtype), names, n_experiences=2, seed=1,
        epochs_per_experience=2, batch_size=16, train_per_class=20,
    )
    assert dm.class_names == names and dm.in_chans == 3 and dm.n_experiences == 2
    orders = {tuple(dm.classes_of(i)) for i in range(2)}
    assert sorted(c for order in orders for c in order) == [0, 1, 2, 3], "each class in exactly one experience"
    assert all(len(dm.benchmark.train_stream[i].dataset) == 40 for i in range(2)), "20 training images a class"
    again = ClassIncrementalDataModule.from_datasets(
        _own_datasets(30), _own_datasets(10), names, n_experiences=2, seed=1
    )
    assert [again.classes_of(i) for i in range(2)] == [dm.classes_of(i) for i in range(2)], "the seed fixes the order"
    bank = ConceptBank.from_names(names, text_model="random")
    model = CVMModule(bank, backbone="reduced_resnet18", in_chans=3, input_size=16, buffer_size=20)
    metrics = ContinualMetricsCallback(n_experiences=dm.n_experiences)
    trainer = pl.Trainer(callbacks=[ExperienceSchedule(), metrics], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    matrix = metrics.matrix.compute()
    assert matrix.shape == (2, 2) and not torch.isnan(matrix).any()
    assert matrix[0, 0] > 0.5, "the first experience's two classes are learned"


@pytest.mark.parametrize("case, fix", [
    ("label outside", "outside the 4 class_names"),
    ("class without training images", "have no training images"),
    ("channels differ", "different channel counts"),
    ("not images", "C x H x W tensors"),
    ("no n_experiences", "needs n_experiences"),
])
def test_from_datasets_bad_input_is_one_clear_error(case, fix):
    from torch.utils.data import ConcatDataset, TensorDataset

    from cvm_lightning.errors import CVMError

    names = ["cat", "dog", "car", "ship"]
    train, test, kwargs = _own_datasets(5), _own_datasets(2), {"n_experiences": 2}
    if case == "label outside":
        train = ConcatDataset([train, TensorDataset(torch.rand(1, 3, 16, 16), torch.tensor([7]))])
    elif case == "class without training images":
        x, y = train.tensors
        train = TensorDataset(x[y != 2], y[y != 2])
    elif case == "channels differ":
        test = _own_datasets(2, channels=1)
    elif case == "not images":
        train = [(float(i), i % 4) for i in range(8)]
    else:
        kwargs = {"n_experiences": None}
    with pytest.raises(CVMError, match=fix):
        ClassIncrementalDataModule.from_datasets(train, test, names, **kwargs)
