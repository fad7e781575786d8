import math

import pytest
import torch

from cvm_lightning.app.cli import main
from cvm_lightning.model.losses import LOSSES, semantic_distance

# Three unit concepts on the axes; one image between concepts 0 and 1, labelled 0.
CONCEPTS = torch.eye(3)
Z = torch.tensor([[math.cos(0.7), math.sin(0.7), 0.0]])
TARGET = torch.tensor([0])
T, MARGIN = torch.tensor(0.1), 0.2


def test_triplet_losses_by_hand():
    d_pos = 1 - math.cos(0.7)
    d_neg = [1 - math.sin(0.7), 1.0]  # to concept 1 and to concept 2
    terms = [max(0.0, d_pos - d + MARGIN) for d in d_neg]
    assert terms[0] > 0 and terms[1] == 0, "one active and one satisfied triplet"
    assert LOSSES["triplet"](Z, CONCEPTS, TARGET, T, MARGIN).item() == pytest.approx(sum(terms) / 2, abs=1e-6)
    assert LOSSES["triplet-hard"](Z, CONCEPTS, TARGET, T, MARGIN).item() == pytest.approx(max(terms), abs=1e-6)


def test_cross_entropy_and_cosine_by_hand():
    logits = (Z @ CONCEPTS.T / T)[0]
    expected_ce = -torch.log_softmax(logits, 0)[0].item()
    assert LOSSES["ce"](Z, CONCEPTS, TARGET, T, MARGIN).item() == pytest.approx(expected_ce, abs=1e-5)
    assert LOSSES["cosine"](Z, CONCEPTS, TARGET, T, MARGIN).item() == pytest.approx(1 - math.cos(0.7), abs=1e-6)


def test_every_loss_has_a_gradient_towards_the_own_concept():
    for name, loss_fn in LOSSES.items():
        z = Z.clone().requires_grad_(True)
        loss_fn(z, CONCEPTS, TARGET, T, MARGIN).backward()
        assert z.grad[0, 0] < 0, f"{name}: moving towards concept 0 lowers the loss"


def test_loss_flag_reaches_the_model_and_bad_names_are_errors(tmp_path, capsys):
    fast = [
        "--epochs",
        "1",
        "--backbone",
        "mobilenetv3_small_050",
        "--input-size",
        "16",
        "--no-progress",
        "--strategies",
        "cvm",
    ]
    with pytest.raises(SystemExit) as stop:
        main(["run", "--loss", "triplet-huge", "--out", str(tmp_path / "bad"), *fast])
    assert stop.value.code == 2 and "invalid choice: 'triplet-huge'" in capsys.readouterr().err
    assert main(["run", "--loss", "triplet-hard", "--n-experiences", "2", "--out", str(tmp_path / "ok"), *fast]) == 0
    assert '"loss": "triplet-hard"' in (tmp_path / "ok" / "results.json").read_text()


def test_semantic_distance_by_hand():
    # Concepts 0 and 1 are close (cos 0.8), concept 2 is far: an image of class 0
    # should be as similar to each concept as concept 0 itself is.
    concepts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]]), dim=1)
    target = torch.tensor([0])
    q = torch.softmax(concepts[0] @ concepts.T / T, 0)
    for z in (concepts[:1], concepts[2:3], Z):
        p = torch.softmax((z @ concepts.T / T)[0], 0)
        expected = (q * (q.log() - p.log())).sum().item()
        assert semantic_distance(z, concepts, target, T).item() == pytest.approx(expected, abs=1e-5)
    assert semantic_distance(concepts[:1], concepts, target, T).item() == pytest.approx(0.0, abs=1e-6)
    assert semantic_distance(concepts[2:3], concepts, target, T) > semantic_distance(Z, concepts, target, T) > 0
