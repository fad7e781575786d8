"""Zero-shot accuracy and forward transfer, measured before each experience is trained."""

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from cvm_lightning.app.cli import main
from cvm_lightning.metrics.zero_shot import ZeroShotRecorder, restricted_accuracy


def test_restricted_accuracy_takes_the_argmax_among_the_candidates_only():
    x = torch.arange(4.0)[:, None]
    y = torch.tensor([0, 1, 2, 3])
    scores = torch.tensor([[0.0, 0.1, 0.2, 0.9]]).repeat(4, 1)  # class 3 always scores highest
    data = TensorDataset(x, y)
    assert restricted_accuracy(lambda b: scores[: len(b)], data, [0, 1, 2, 3]) == 0.25
    assert restricted_accuracy(lambda b: scores[: len(b)], data, [0, 1, 2]) == 0.25  # class 2 wins among 0-2
    assert restricted_accuracy(lambda b: scores[: len(b)], data, [0, 1]) == 0.25


def test_forward_transfer_is_the_gain_over_the_untrained_model():
    data = [TensorDataset(torch.zeros(2, 1), torch.tensor([2 * j, 2 * j + 1])) for j in range(3)]
    recorder = ZeroShotRecorder(data, [[0, 1], [2, 3], [4, 5]])
    assert recorder.unseen_before(1) == [2, 3, 4, 5]
    recorder.reference = [0.5, 0.0, 0.5]
    recorder.unseen = [0.5, 0.5, 1.0]
    recorder.own = [0.5, 1.0, 1.0]
    summary = recorder.summary()
    assert summary["fwt"] == pytest.approx(((0.5 - 0.0) + (1.0 - 0.5)) / 2)
    assert summary["zero_shot_accuracy"] == pytest.approx(0.75) and summary["zero_shot_own_accuracy"] == 1.0
    assert summary["zero_shot_chance"] == pytest.approx((1 / 4 + 1 / 2) / 2)


@pytest.mark.slow
def test_every_strategy_reports_zero_shot_and_fwt_on_real_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--strategies", "cvm,naive", "--epochs", "1", "--input-size", "16", "--train-per-class", "30",
                 "--test-per-class", "20", "--no-progress", "--out", str(out)]) == 0
    assert "zero-shot (chance)" in capsys.readouterr().out
    for name, result in json.loads((out / "results.json").read_text())["strategies"].items():
        rows = result["zero_shot"]
        assert all(len(rows[k]) == 5 for k in ("own", "unseen", "reference")), name
        assert all(0 <= v <= 1 for row in rows.values() for v in row), name
        assert rows["unseen"][0] == rows["reference"][0], f"{name}: experience 0 is scored untrained"
        later = [rows["unseen"][j] - rows["reference"][j] for j in range(1, 5)]
        assert result["fwt"] == pytest.approx(sum(later) / 4, abs=1e-5) and not math.isnan(result["zero_shot_accuracy"])


def test_calibrated_stacking_moves_named_classes_into_reach():
    from cvm_lightning.metrics.generalized_zero_shot import calibrated_stacking_margin, generalized_zero_shot

    seen = torch.tensor([True, True, False, False])
    # Trained classes score 0.7 higher on every image: the named ones are never predicted uncalibrated.
    bias = torch.tensor([0.7, 0.7, 0.0, 0.0])
    labels = torch.tensor([0, 1, 2, 3] * 25)
    signal = torch.nn.functional.one_hot(labels, 4).float() * 0.5
    noise = torch.linspace(-0.1, 0.1, 100)[:, None] * torch.tensor([1.0, -1.0, 0.5, -0.5])
    sims = signal + bias + noise
    plain = generalized_zero_shot(sims, labels, seen)
    assert plain["seen"] == 1.0 and plain["unseen"] == 0.0 and plain["harmonic"] == 0.0
    held_out = sims[labels < 2]  # images of seen classes only, as a user has
    margin = calibrated_stacking_margin(held_out, seen, quantile=0.1)
    gaps = held_out[:, :2].max(1).values - held_out[:, 2:].max(1).values
    assert (gaps < margin).float().mean().item() == pytest.approx(0.1, abs=0.03), "about 10% of them would move"
    calibrated = generalized_zero_shot(sims, labels, seen, margin)
    assert calibrated["unseen"] > 0.8 and calibrated["seen"] >= 0.85 and calibrated["harmonic"] > 0.8
    with pytest.raises(ValueError, match="both seen"):
        calibrated_stacking_margin(held_out, torch.ones(4, dtype=torch.bool))
