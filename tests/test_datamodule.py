"""One ``trainer.fit(model, datamodule=...)`` learns a whole stream, the Lightning way."""

import pytest
import pytorch_lightning as pl
import torch

from cvm_lightning import CVMModule, ConceptBank
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.errors import ConfigError
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.training import ExperienceSchedule, LightningStreamAdapter

SMALL = dict(backbone="reduced_resnet18", in_chans=1, input_size=16, buffer_size=60)


def _module(dm: ClassIncrementalDataModule) -> CVMModule:
    bank = ConceptBank.from_names(dm.class_names, text_model="random")
    return CVMModule(bank, **SMALL)


def test_one_fit_trains_every_experience_and_matches_one_fit_per_experience(tmp_path):
    dm = ClassIncrementalDataModule("split-digits", epochs_per_experience=1, train_per_class=30)
    pl.seed_everything(0)
    model = _module(dm)
    metrics = ContinualMetricsCallback(dm.n_experiences)
    trainer = pl.Trainer(callbacks=[ExperienceSchedule(), metrics], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == dm.max_epochs == 5
    assert bool(model.seen.all()) and model.current_experience == 4
    one_fit = metrics.matrix.compute()
    assert not torch.isnan(one_fit.tril()).any(), "every experience ended with a validation row"

    pl.seed_everything(0)
    reference = _module(dm)
    reference_metrics = ContinualMetricsCallback(dm.n_experiences)
    adapter = LightningStreamAdapter(reference, epochs=1, callbacks=[reference_metrics], logger=False,
                                     enable_checkpointing=False, enable_progress_bar=False)
    adapter.fit_stream(dm.benchmark.train_stream, dm.benchmark.test_stream)
    torch.testing.assert_close(one_fit, reference_metrics.matrix.compute())


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
