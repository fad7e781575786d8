"""Task-free streams: one pass, boundaries hidden from every strategy, scored at them and at anytime points."""

import json

import pytest
import pytorch_lightning as pl
import torch
from avalanche.benchmarks.scenarios.generic_scenario import MaskedAttributeError
from avalanche.core import SupervisedPlugin
from cli_helpers import expect_error

from cvm_lightning.app.cli import main
from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.data import ClassIncrementalDataModule, StreamBatchSampler
from cvm_lightning.metrics.task_free import TaskFreeEvaluator, seen_class_accuracy
from cvm_lightning.training import BaselineSettings, ClassifierNet, ExperienceSchedule, build_baseline

TASK_FREE = ["--mini-experience-size", "10", "--batch-size", "10", "--epochs", "1", "--no-recalibrate-bn"]


def task_free_digits(**kwargs) -> ClassIncrementalDataModule:
    kwargs = {"mini_experience_size": 10, "batch_size": 10, "epochs_per_experience": 1, "train_per_class": 20,
              **kwargs}
    return ClassIncrementalDataModule("split-digits", **kwargs)


class BoundaryProbe(SupervisedPlugin):
    """Tries, as a strategy would, to learn where an experience ends; counts what it was shown."""

    ATTRIBUTES = ("origin_experience", "is_first_subexp", "is_last_subexp", "sub_stream_length")

    def __init__(self) -> None:
        super().__init__()
        self.trained, self.sizes = 0, []

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        for name in self.ATTRIBUTES:
            with pytest.raises(MaskedAttributeError):
                getattr(strategy.experience, name)
        self.trained += 1
        self.sizes.append(len(strategy.experience.dataset))


def test_no_avalanche_strategy_sees_a_boundary_in_the_task_free_stream():
    data = task_free_digits()
    net = ClassifierNet("reduced_resnet18", 10, in_chans=1, input_size=16)
    probe = BoundaryProbe()
    settings = BaselineSettings(buffer_size=50, batch_size=10, epochs=1, task_free=True, recalibrate_bn=False)
    strategy = build_baseline("replay", net, torch.optim.SGD(net.parameters(), lr=0.1), settings, [probe])
    for mini_experience in data.online_train_stream():
        strategy.train(mini_experience, num_workers=0)
    assert probe.trained == 20 and set(probe.sizes) == {10}, "200 samples in mini-experiences of 10, one pass"


def test_cvm_learns_a_task_free_stream_without_any_experience_hook(digit_bank, monkeypatch):
    from cvm_lightning.metrics.task_free import TaskFreeEvaluation
    from cvm_lightning.model import CVMModule

    def told(*args, **kwargs):
        raise AssertionError("a task-free learner was told of an experience")

    monkeypatch.setattr(CVMModule, "start_experience", told)
    monkeypatch.setattr(CVMModule, "end_experience", told)
    data = task_free_digits(anytime_every=50)
    model = CVMModule(digit_bank, in_chans=1, input_size=16, buffer_size=50, recalibrate_bn=False)
    scoring = TaskFreeEvaluation()
    # As `cvm fit` builds it: the schedule gives way to a single pass, and max_epochs=-1 would otherwise never end.
    trainer = pl.Trainer(callbacks=[ExperienceSchedule(), scoring], max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    assert trainer.current_epoch == 1 and trainer.limit_val_batches == 0, "one pass, no validation loop"
    assert bool(model.seen.all()), "every class became seen as its labels arrived in batches"
    R = scoring.evaluator.matrix.compute()
    assert not torch.isnan(R.tril()).any(), "a row after every hidden boundary"
    assert [samples for samples, _ in scoring.evaluator.anytime] == [50, 100, 150, 200]


def test_task_free_scoring_stays_idle_on_a_boundary_aware_stream(digit_bank):
    from cvm_lightning.metrics.task_free import TaskFreeEvaluation
    from cvm_lightning.model import CVMModule

    data = ClassIncrementalDataModule("split-digits", n_experiences=2, train_per_class=5, epochs_per_experience=1)
    scoring = TaskFreeEvaluation()
    trainer = pl.Trainer(callbacks=[ExperienceSchedule(), scoring], max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(CVMModule(digit_bank, in_chans=1, input_size=16, buffer_size=10), datamodule=data)
    assert scoring.evaluator is None and trainer.current_epoch == 2, "the schedule ran both experiences"


class LabelReader(torch.nn.Module):
    """Reads the class from the image (pixel value = class / 10), but calls class 3 class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.round(x.flatten(1)[:, 0] * 10).long()
        classes = torch.where(classes == 3, torch.zeros_like(classes), classes)
        return torch.nn.functional.one_hot(classes, 4).float()


def _test_set(classes: list[int], per_class: int = 4) -> torch.utils.data.TensorDataset:
    y = torch.tensor(classes).repeat_interleave(per_class)
    return torch.utils.data.TensorDataset(y.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2) / 10, y)


def test_anytime_accuracy_and_boundary_rows_match_hand_computed_values():
    evaluator = TaskFreeEvaluator([_test_set([0, 1]), _test_set([2, 3])], every=5)
    model = LabelReader()
    evaluator.advance(model, torch.tensor([0, 0, 0]))  # 3 samples: no point yet
    assert evaluator.anytime == []
    evaluator.advance(model, torch.tensor([1, 1, 1]))  # 6: seen {0, 1}, all right
    evaluator.advance(model, torch.tensor([3, 3, 3, 3]), ended=0)  # 10: seen {0, 1, 3}; class 3 always wrong
    assert evaluator.anytime == [(6, 1.0), (10, pytest.approx(8 / 12))]
    R = evaluator.matrix.compute()
    assert R[0, 0] == 1.0 and R[0, 1] == 0.5, "class 2 right, class 3 wrong"
    assert torch.isnan(R[1:]).all()
    assert evaluator.summary()["anytime_accuracy"] == pytest.approx((1 + 8 / 12) / 2)
    preds = torch.tensor([0, 1, 1, 2])
    assert seen_class_accuracy(preds, torch.tensor([0, 1, 2, 2]), [0, 2]) == pytest.approx(2 / 3)
    assert seen_class_accuracy(preds, torch.tensor([0, 1, 2, 2]), [5]) != seen_class_accuracy(preds, preds, [5])


def test_stream_batches_never_mix_two_experiences_and_shuffle_with_the_seed():
    sampler = StreamBatchSampler([5, 7], batch_size=3, seed=1)
    batches = list(sampler)
    assert [len(b) for b in batches] == [3, 2, 3, 3, 1] and sampler.experience_ends == [2, 5]
    assert set(batches[0] + batches[1]) == set(range(5)) and set(sum(batches[2:], [])) == set(range(5, 12))
    assert batches == list(StreamBatchSampler([5, 7], batch_size=3, seed=1))
    assert batches != list(StreamBatchSampler([5, 7], batch_size=3, seed=2))
    dropped = StreamBatchSampler([5, 7], batch_size=3, drop_last=True)
    assert [len(b) for b in dropped] == [3, 3, 3] and dropped.experience_ends == [1, 3]


@pytest.mark.parametrize("args,fix", [
    (["--mini-experience-size", "0"], "--mini-experience-size must be an integer >= 1"),
    ([*TASK_FREE, "--anytime-every", "0"], "--anytime-every must be an integer >= 1"),
    (["--anytime-every", "100"], "pass --mini-experience-size N too"),
    (["--mini-experience-size", "10", "--batch-size", "10", "--no-recalibrate-bn"], "single pass: use --epochs 1"),
    (["--mini-experience-size", "10", "--batch-size", "10", "--epochs", "1"], "--no-recalibrate-bn"),
    (["--mini-experience-size", "10", "--epochs", "1", "--no-recalibrate-bn"], "--batch-size 64 is more than a "
                                                                                "mini-experience of 10 samples"),
    ([*TASK_FREE, "--strategies", "cvm,icarl"], "Strategies icarl need experience boundaries"),
    ([*TASK_FREE, "--growing-head"], "drop --growing-head"),
])
def test_bad_task_free_settings_are_one_line_and_write_nothing(args, fix, tmp_path, capsys):
    expect_error(["run", *args, "--out", str(tmp_path / "out")], fix, capsys, tmp_path)
    assert not (tmp_path / "out").exists()


def test_the_online_preset_is_task_free_and_scores_anytime():
    config = RunConfig.from_protocol("clb-online-split-cifar10")
    assert (config.mini_experience_size, config.batch_size, config.epochs_per_experience) == (10, 10, 1)
    assert config.anytime_every == 2000 and config.recalibrate_bn is False and config.growing_head is False
    report = RunConfig.from_protocol("clb-online-split-cifar10", anytime_every=500).protocol_report()
    assert report["modified"] is False, "how often a run is scored changes none of its training"


def test_a_task_free_presets_yaml_is_a_config_lightning_cli_accepts(tmp_path, capsys):
    assert main(["protocols", "clb-online-split-cifar10", "--yaml"]) == 0
    path = tmp_path / "online.yaml"
    path.write_text(capsys.readouterr().out)
    assert main(["fit", "--config", str(path), "--data.data_root", str(tmp_path), "--print_config"]) == 0
    printed = capsys.readouterr().out
    for line in ("mini_experience_size: 10", "anytime_every: 2000", "batch_size: 10", "recalibrate_bn: false"):
        assert line in printed, line


def test_cvm_fit_learns_a_task_free_stream_and_writes_its_matrix_and_anytime_points(tmp_path):
    assert main(["fit", "--data.benchmark", "split-digits", "--data.mini_experience_size", "10",
                 "--data.batch_size", "10", "--data.epochs_per_experience", "1", "--data.train_per_class", "20",
                 "--data.anytime_every", "100",
                 "--model.input_size", "16", "--model.recalibrate_bn", "false", "--model.buffer_size", "50",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]) == 0
    saved = json.loads(next(tmp_path.rglob("accuracy_matrix.json")).read_text())
    rows = saved["accuracy_matrix"]
    assert len(rows) == 5 and all(cell is not None for i, row in enumerate(rows) for cell in row[: i + 1])
    assert [samples for samples, _ in saved["anytime"]] == [100, 200]
    assert 0 <= saved["anytime_acc"] <= 1 and saved["avg_acc"] == pytest.approx(sum(rows[4]) / 5, abs=1e-5)


@pytest.mark.slow
def test_a_task_free_run_is_scored_at_its_hidden_boundaries_and_anytime(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *TASK_FREE, "--anytime-every", "100", "--train-per-class", "30", "--strategies", "cvm,er_ace",
            "--buffer", "50", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert any(line.startswith("strategy") and line.endswith("anytime acc") for line in printed.splitlines())
    results = json.loads((out / "results.json").read_text())
    for name in ("cvm", "er_ace"):
        r = results["strategies"][name]
        assert [samples for samples, _ in r["anytime"]] == [100, 200, 300]
        assert all(cell is not None for i, row in enumerate(r["accuracy_matrix"]) for cell in row[: i + 1])
        assert r["zero_shot_accuracy"] != r["zero_shot_accuracy"], "no zero-shot rows in a task-free run (NaN)"
    assert (out / "anytime_accuracy.png").is_file()
