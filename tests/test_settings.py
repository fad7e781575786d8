"""The validation layer: each vocabulary matches the registry that implements it; rules read as users type."""

import subprocess
import sys

import pytest

from cvm_lightning.app.strategies import STRATEGIES
from cvm_lightning.errors import ConfigError
from cvm_lightning.settings import CHOICES, check_settings


def test_every_vocabulary_is_the_key_set_of_its_registry():
    from cvm_lightning.deploy.export import FORMATS
    from cvm_lightning.hardware import TORCH_DEVICES
    from cvm_lightning.model.augment import AUGMENTATIONS
    from cvm_lightning.model.heads import HEADS
    from cvm_lightning.model.losses import LOSSES
    from cvm_lightning.model.optimizers import OPTIMIZERS
    from cvm_lightning.training.baselines import BASELINES, SCR_VIEWS

    assert tuple(AUGMENTATIONS) == CHOICES["augment"]
    assert tuple(HEADS) == CHOICES["head"]
    assert tuple(LOSSES) == CHOICES["loss"]
    assert tuple(OPTIMIZERS) == CHOICES["optimizer"]
    assert tuple(FORMATS) == CHOICES["format"]
    assert tuple(SCR_VIEWS) == CHOICES["scr_views"]
    assert tuple(TORCH_DEVICES) == CHOICES["accelerator"]
    avalanche = [name for name, entry in STRATEGIES.items() if entry.runs_on == "avalanche"]
    assert avalanche == list(BASELINES), (
        "every Avalanche entry of the registry has a builder, and no builder is unlisted"
    )


@pytest.mark.parametrize("values", [{"lr": 0}, {"lr": float("inf")}, {"epochs": 1.5}, {"epochs": True},
                                    {"batch_size": "64"}, {"input_size": None, "seed": None}, {"head": "deep"}])
def test_out_of_range_or_mistyped_values_are_config_errors(values):
    with pytest.raises(ConfigError):
        check_settings(values)


def test_optional_settings_accept_none_and_unknown_names_are_left_alone():
    check_settings({"n_experiences": None, "input_size": None, "augment": None, "anything_else": -1})


def test_the_command_line_validates_without_importing_torch():
    code = ("import sys; from cvm_lightning.app.cli import main; code = main(['run', '--lr', '-1']); "
            "assert 'torch' not in sys.modules, 'validation imported torch'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "cvm: error: --lr must be a number > 0 (for example 1e-3), got -1.0."


def test_every_run_setting_is_part_of_some_strategys_cache_key():
    """A setting no entry reads would be left out of the sweep's cache keys, and stale results reused."""
    from dataclasses import fields

    from cvm_lightning.app.run_config import MODEL_SETTINGS, NOT_IN_RESULTS, RunConfig
    from cvm_lightning.app.strategies import SHARED_SETTINGS

    read = set(SHARED_SETTINGS).union(*(entry.reads for entry in STRATEGIES.values()), MODEL_SETTINGS)
    assert {f.name for f in fields(RunConfig)} - read == {"strategies", "seeds", *NOT_IN_RESULTS}


def test_cache_keys_follow_what_each_strategy_reads():
    from dataclasses import replace

    from cvm_lightning.app.run_config import RunConfig

    base = RunConfig()
    changed = replace(base, temperature=0.1)
    assert changed.settings_of("cvm") != base.settings_of("cvm")
    assert changed.settings_of("der") == base.settings_of("der"), "DER does not read CVM's temperature"
    assert base.settings_of("der")["hyperparameters"] == {"alpha": 0.1, "beta": 0.5}
    assert replace(base, lr=0.01).settings_of("der") != base.settings_of("der")


def test_run_settings_are_the_signatures_of_what_a_run_builds():
    """cvm run's settings, defaults and help come from CVMModule's and ClassIncrementalDataModule's signatures."""
    import inspect

    from cvm_lightning.app.run_config import DATA_SETTINGS, FROM_THE_DATA, MODEL_SETTINGS, RunConfig
    from cvm_lightning.data import ClassIncrementalDataModule
    from cvm_lightning.model import CVMModule

    for cls, read in ((CVMModule, MODEL_SETTINGS), (ClassIncrementalDataModule, DATA_SETTINGS)):
        parameters = inspect.signature(cls.__init__).parameters
        expected = {name: p.default for name, p in parameters.items()
                    if p.default is not inspect.Parameter.empty and name not in FROM_THE_DATA}
        assert {name: s.default for name, s in read.items()} == expected, cls.__name__
        assert all(s.help for s in read.values()), f"{cls.__name__}: every setting has an Args: entry"
    defaults = RunConfig()
    assert (defaults.lr, defaults.buffer_size, defaults.epochs_per_experience) == (1e-3, 100, 5)
    old = RunConfig.from_json({"buffer": 7, "epochs": 2, "strategies": ["cvm"]})
    assert (old.buffer_size, old.epochs_per_experience) == (7, 2), "run_config.json files of earlier versions"
