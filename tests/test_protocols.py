"""Protocol presets: what a preset sets, what marks a run modified, and a preset run end to end at tiny scale."""

import json
from dataclasses import fields, replace

import pytest
from cli_helpers import expect_error, make_image_folder

from cvm_lightning.app.cli import main
from cvm_lightning.app.protocols import PROTOCOLS, get_protocol
from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.errors import ConfigError

CLB = "clb-split-cifar10"
CIFAR10_FOLDERS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_a_preset_expands_to_exactly_its_listed_settings():
    protocol = get_protocol(CLB)
    config, default = RunConfig.from_protocol(CLB), RunConfig()
    for field in fields(RunConfig):
        value = getattr(config, field.name)
        if field.name in protocol.settings:
            assert value == protocol.settings[field.name], field.name
        elif field.name == "strategies":
            assert value == protocol.strategies
        elif field.name == "protocol":
            assert value == CLB
        else:
            assert value == getattr(default, field.name), f"{field.name} is not listed, so it keeps its default"
    report = config.protocol_report()
    assert report["modified"] is False and report["overrides"] == {}
    assert report["references"] == {"er_ace": 0.45, "er_aml": 0.47} and report["tolerance"] == 0.03


def test_the_clb_preset_holds_the_published_settings():
    """The values of Avalanche's split-CIFAR-10 scripts (experiments/split_cifar10/er_ace.py)."""
    config = RunConfig.from_protocol(CLB)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == ("sgd", 0.1, 0.0, 0.0)
    assert (config.batch_size, config.replay_batch_size, config.buffer_size) == (10, 10, 1000)
    assert (config.epochs_per_experience, config.drop_last, config.eval_batch_size) == (1, True, 64)
    assert (config.normalize, config.augment, config.recalibrate_bn) == ("cifar10-avalanche", "none", False)
    assert config.shuffle_classes is False and config.train_per_class is None and config.growing_head is True


@pytest.mark.parametrize("changes", [{"batch_size": 20}, {"lr": 0.05, "epochs_per_experience": 2},
                                     {"temperature": 0.1}])
def test_an_override_marks_the_run_modified_and_names_each_override(changes):
    report = RunConfig.from_protocol(CLB, **changes).protocol_report()
    assert report["modified"] is True
    assert report["overrides"] == changes


def test_where_the_data_lives_and_how_the_run_shares_the_machine_do_not_modify_it():
    config = RunConfig.from_protocol(CLB, data_root="/somewhere", threads=1, progress=False, seeds=(0, 1),
                                     strategies=("er_ace", "naive"), channels_last=True, accelerator="gpu")
    assert config.protocol_report()["modified"] is False


def replay_results(protocol: dict) -> dict:
    """A run's results under ``protocol``: one replay row at 0.5."""
    nan = float("nan")
    return {"protocol": protocol, "strategies": {"replay": {
        "final_avg_accuracy": 0.5, "forgetting": 0.1, "bwt": -0.1, "zero_shot_accuracy": nan, "zero_shot_chance": nan,
        "fwt": nan, "train_seconds": 1.0, "params": 1, "peak_rss_mb": 1.0}}}


@pytest.mark.parametrize("seeds", [{"seed": 5}, {"seeds": (3, 4)}])
def test_another_seed_is_another_run_of_the_published_protocol(seeds):
    from cvm_lightning.app.reporting import protocol_line, text_table

    report = RunConfig.from_protocol("clb-online-split-cifar10", **seeds).protocol_report()
    assert report["modified"] is False and report["overrides"] == {}
    results = replay_results(report)
    assert protocol_line(results).startswith("Protocol: clb-online-split-cifar10 v")
    assert "as published" in protocol_line(results)
    header, row = text_table(results).splitlines()
    assert header.split()[-3:] == ["reference", "within", "0.03"] and row.split()[-1] == "yes"


def test_a_modified_protocol_shows_no_reference_columns():
    from cvm_lightning.app.reporting import protocol_line, text_table

    report = RunConfig.from_protocol("clb-online-split-cifar10", lr=0.05).protocol_report()
    results = replay_results(report)
    assert protocol_line(results).startswith("Modified protocol:")
    assert "reference" not in text_table(results) and "within" not in text_table(results)


def test_a_strategy_gets_the_presets_own_values_for_it_unless_the_run_changed_that_setting():
    config = RunConfig.from_protocol(CLB)
    assert config.for_strategy("er_aml").growing_head is False, "the ER-AML script trains a fixed head"
    assert config.for_strategy("er_ace").growing_head is True
    assert config.settings_of("er_aml")["growing_head"] is False
    changed = RunConfig.from_protocol(CLB, growing_head=False)
    assert changed.for_strategy("er_ace").growing_head is False


def test_a_run_without_a_protocol_reports_none():
    assert RunConfig().protocol_report() is None
    assert RunConfig().for_strategy("er_aml") == RunConfig()


def test_an_unknown_protocol_is_a_config_error_naming_the_presets():
    with pytest.raises(ConfigError, match=f"Unknown --protocol 'clb-split-cifar'.*{CLB}"):
        RunConfig(protocol="clb-split-cifar")


def test_protocols_lists_every_preset_with_its_flags(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    for protocol in PROTOCOLS.values():
        assert protocol.title in out and protocol.source in out
    assert "--optimizer sgd --lr 0.1 --momentum 0.0" in out and "--no-shuffle-classes" in out
    assert "er_aml alone: --no-growing-head" in out


def test_a_presets_yaml_is_a_config_lightning_cli_accepts(tmp_path, capsys):
    assert main(["protocols", CLB, "--yaml"]) == 0
    path = tmp_path / "clb.yaml"
    path.write_text(capsys.readouterr().out)
    assert main(["fit", "--config", str(path), "--data.data_root", str(tmp_path), "--print_config"]) == 0
    printed = capsys.readouterr().out
    for line in ("optimizer: sgd", "lr: 0.1", "momentum: 0.0", "normalize: cifar10-avalanche", "drop_last: true",
                 "shuffle_classes: false", "batch_size: 10", f"data_root: {tmp_path}"):
        assert line in printed, line


def test_bad_protocol_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(["run", "--protocol", "nope", "--out", str(out)], "Unknown --protocol 'nope'", capsys, tmp_path)
    expect_error(["run", "--protocol", CLB, "--out", str(out)], "needs --data-root DIR", capsys, tmp_path)
    expect_error(["protocols", "nope"], "Unknown --protocol 'nope'", capsys, tmp_path)
    expect_error(["protocols", "--yaml"], "--yaml prints one preset", capsys, tmp_path)
    expect_error(["run", "--momentum", "1.5", "--out", str(out)], "--momentum must be a number >= 0 and < 1",
                 capsys, tmp_path)
    with pytest.raises(SystemExit) as stop:  # argparse's own line for a value outside the choices
        main(["run", "--scr-views", "colour", "--out", str(out)])
    assert stop.value.code == 2 and "invalid choice: 'colour'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_modified_preset_runs_end_to_end_and_says_so(tmp_path, capsys):
    root = make_image_folder(tmp_path / "cifar", classes=CIFAR10_FOLDERS, train=12, test=3)
    out = tmp_path / "run"
    args = ["run", "--protocol", CLB, "--data-root", str(root), "--train-per-class", "12", "--strategies",
            "er_ace,er_aml,cvm", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"Modified protocol: {CLB} v1 with --train-per-class 12;" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["modified"] is True and results["protocol"]["overrides"] == {"train_per_class": 12}
    assert results["classes_per_experience"] == [2] * 5
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["protocol"] == CLB and saved["optimizer"] == "sgd" and saved["drop_last"] is True
    header = next(line for line in printed.splitlines() if line.startswith("strategy"))
    assert "reference" not in header and "within" not in header, "a modified protocol is not held to its references"
    # A growing head has no output for a class before it arrives: its zero-shot score is not measured.
    zero_shot = results["strategies"]["er_ace"]["zero_shot_accuracy"]
    assert zero_shot != zero_shot, "NaN: not measured"
    # ER-ACE's head grew to the ten classes; ER-AML's fixed head had them from the start: same parameter count.
    assert results["strategies"]["er_ace"]["params"] == results["strategies"]["er_aml"]["params"]


def test_the_published_protocol_is_reported_as_published():
    from cvm_lightning.app.reporting import protocol_line

    config = RunConfig.from_protocol(CLB, data_root="/data")
    assert protocol_line({"protocol": config.protocol_report()}).startswith(f"Protocol: {CLB} v1, as published")
    modified = replace(config, lr=0.01)
    assert "Modified protocol" in protocol_line({"protocol": modified.protocol_report()})
    assert protocol_line({"protocol": None}).startswith("Protocol: this package's settings")


def test_the_der_preset_sets_ders_own_hyperparameters_and_ers_learning_rate():
    config = RunConfig.from_protocol("der-seq-cifar10")
    assert config.settings_of("der")["hyperparameters"] == {"alpha": 0.2, "beta": 0.5}
    assert RunConfig().settings_of("der")["hyperparameters"] == {"alpha": 0.1, "beta": 0.5}
    assert config.for_strategy("replay").lr == 0.1 and config.for_strategy("der").lr == 0.03
    assert (config.backbone, config.epochs_per_experience, config.batch_size) == ("cifar_resnet18", 50, 32)


def test_the_scr_preset_holds_the_settings_of_avalanches_scr_script():
    """experiments/split_cifar10/supervised_contrastive_replay.py: memory 200 replayed 100 a batch, [0, 1] pixels."""
    config = RunConfig.from_protocol("clb-scr-split-cifar10")
    assert (config.buffer_size, config.replay_batch_size, config.batch_size) == (200, 100, 10)
    assert (config.normalize, config.augment, config.scr_views) == ("none", "none", "crop-flip-colour")
    assert (config.optimizer, config.lr, config.momentum, config.eval_batch_size) == ("sgd", 0.1, 0.0, 64)
    assert config.mini_experience_size == 10 and config.shuffle_classes is True and config.train_per_class is None
    assert config.protocol_report()["references"] == {"scr": 0.36}


@pytest.mark.slow
def test_the_scr_preset_runs_a_smoke_step(tmp_path, capsys):
    root = make_image_folder(tmp_path / "cifar", classes=CIFAR10_FOLDERS, train=10, test=2)
    out = tmp_path / "run"
    assert main(["run", "--protocol", "clb-scr-split-cifar10", "--data-root", str(root), "--strategies", "scr",
                 "--anytime-every", "50", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["modified"] is False and results["protocol"]["name"] == "clb-scr-split-cifar10"
    scr = results["strategies"]["scr"]
    assert [samples for samples, _ in scr["anytime"]] == [50, 100]
    assert len(scr["accuracy_matrix"]) == 5


@pytest.mark.slow
def test_the_der_preset_runs_a_smoke_step(tmp_path, capsys):
    """The full preset is an accelerator's work; one epoch on a few images checks that it runs as declared."""
    root = make_image_folder(tmp_path / "cifar", classes=CIFAR10_FOLDERS, train=4, test=2)
    out = tmp_path / "run"
    assert main(["run", "--protocol", "der-seq-cifar10", "--data-root", str(root), "--epochs", "1",
                 "--strategies", "der", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["overrides"] == {"epochs_per_experience": 1}
    assert results["strategies"]["der"]["params"] > 11_000_000, "the full-width CIFAR ResNet-18"
    assert len(results["strategies"]["der"]["accuracy_matrix"]) == 5
