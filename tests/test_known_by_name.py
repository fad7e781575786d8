"""Classes known by name only: added from the text model, predicted at once, kept by checkpoints and exports."""

import json

import torch
import torch.nn.functional as F
from cli_helpers import TINY_RUN, expect_error, make_image_folder

from cvm_lightning.app.cli import main
from cvm_lightning.concepts import ConceptBank


def test_add_classes_builds_centred_concepts_with_the_models_own_text_model(digit_bank):
    from cvm_lightning import CVMModule

    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, input_size=16)
    module.start_experience([0, 1])
    ids = module.add_classes(["ten", "eleven"])
    assert ids == [10, 11] and module.class_names[-2:] == ["ten", "eleven"]
    assert bool(module.seen[ids].all()), "ready to predict at once"
    expected = ConceptBank.from_names(["ten", "eleven"], templates=digit_bank.templates).embeddings
    torch.testing.assert_close(module.concepts[ids], F.normalize(expected - module.space.concept_center, dim=-1))
    logits = module.eval()(torch.rand(4, 1, 8, 8))
    assert torch.isfinite(logits[:, ids]).all() and torch.isinf(logits[:, 2:10]).all(), (
        "new classes compete, unseen do not"
    )


def test_learn_names_round_trips_through_checkpoint_export_and_predict(workspace, tmp_path, capsys):
    out = tmp_path / "named.ckpt"
    before = workspace["ckpt"].read_bytes()
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--names", "horse, truck", "--out", str(out)]) == 0
    assert "Added horse, truck by name" in capsys.readouterr().out
    assert workspace["ckpt"].read_bytes() == before, "the old checkpoint is untouched"
    exported = tmp_path / "named.pt"
    assert main(["export", "--checkpoint", str(out), "--out", str(exported)]) == 0
    files = {"cvm_meta.json": ""}
    torch.jit.load(str(exported), _extra_files=files)
    assert json.loads(files["cvm_meta.json"])["class_names"] == ["cat", "dog", "frog", "ship", "horse", "truck"]
    capsys.readouterr()
    images = str(workspace["images"])
    assert main(["predict", "--model", str(exported), images, "--classes", "horse,truck"]) == 0
    predicted = {line.split("\t")[1] for line in capsys.readouterr().out.splitlines()}
    assert predicted <= {"horse", "truck"}, "only the candidate classes compete"
    assert main(["predict", "--model", str(out), images, "--classes", "cat,truck"]) == 0


def test_bad_names_are_one_line_and_write_nothing(workspace, capsys):
    ckpt, root = str(workspace["ckpt"]), workspace["root"]
    for names, fix in ((",", "empty name"), ("horse,horse", "Duplicate class names"), ("cat", "already classes"),
                       ("horse, ", "empty name")):
        expect_error(["learn", "--checkpoint", ckpt, "--names", names], fix, capsys, root)
    expect_error(["learn", "--checkpoint", ckpt], "Pass --data DIR", capsys, root)
    expect_error(
        ["learn", "--checkpoint", ckpt, "--names", "horse", "--data", str(workspace["new"])], "not both", capsys, root
    )
    expect_error(["predict", "--model", str(workspace["pt"]), str(workspace["images"]), "--classes", "cat,zebra"],
                 "not learned classes", capsys, root)


def test_learn_with_shots_uses_k_images_a_class(workspace, tmp_path, capsys):
    from cvm_lightning.app.cli import main
    from cvm_lightning.deploy.predict import load_checkpoint

    out = tmp_path / "few.ckpt"
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(workspace["new"]), "--epochs", "1",
                 "--shots", "2", "--out", str(out)]) == 0
    module = load_checkpoint(out)
    for name in ("horse", "truck"):
        stored = module.replay.samples_of(module.class_names.index(name))
        assert 0 < len(stored) <= 2, (name, len(stored))
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(workspace["new"]), "--shots", "0",
                 "--out", str(tmp_path / "none.ckpt")]) == 2
    assert "--shots must be an integer >= 1" in capsys.readouterr().err


def test_prototypes_vote_by_class_mean_features_beside_the_concepts():
    from cvm_lightning.model.prototypes import ClassPrototypes

    torch.manual_seed(0)
    # Every image shares one large direction (what draws all images to one class without centring).
    shared = 5 * F.normalize(torch.randn(16), dim=0)
    means = 2 * torch.eye(16)[:3]
    labels = torch.arange(3).repeat_interleave(4)
    features = shared + means[labels] + 0.1 * torch.randn(12, 16)
    embeddings = F.normalize(torch.randn(12, 8), dim=-1)  # the map knows nothing of these classes
    concepts = F.normalize(torch.randn(4, 8), dim=-1)
    prototypes = ClassPrototypes(4, 16, 8)
    assert not prototypes.active
    prototypes.accumulate(features, labels)
    prototypes.update(embeddings)
    assert prototypes.active and prototypes.has_prototype.tolist() == [True, True, True, False]
    test = shared + means[labels] + 0.1 * torch.randn(12, 16)
    scores = prototypes.scores(test, embeddings, concepts)
    assert (scores[:, :3].argmax(1) == labels).all(), "the prototype vote decides where the concepts do not"
    torch.testing.assert_close(scores[:, 3], F.normalize(embeddings - embeddings.mean(0), dim=-1)
                               @ F.normalize(concepts[3] - embeddings.mean(0), dim=0))
    picked = prototypes.select(torch.tensor([2, 0]))
    torch.testing.assert_close(picked.scores(test, embeddings, concepts[[2, 0]]), scores[:, [2, 0]])


def test_learn_with_prototypes_trains_nothing_and_round_trips_through_export(workspace, tmp_path, capsys):
    from cvm_lightning.deploy.export import DeployedCVM
    from cvm_lightning.deploy.predict import Predictor, load_checkpoint

    before = load_checkpoint(workspace["ckpt"])
    out = tmp_path / "proto.ckpt"
    assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(workspace["new"]), "--shots", "2",
                 "--method", "prototypes", "--out", str(out)]) == 0
    assert "this update's test images" in capsys.readouterr().out
    module = load_checkpoint(out)
    names = module.class_names
    assert module.prototypes.has_prototype.tolist() == [True] * len(names), (
        "old classes from the memory, new from K shots"
    )
    for key, value in before.state_dict().items():
        after = module.state_dict()[key]
        if not key.startswith("prototypes."):  # the concepts and the seen mask grew by the new classes
            torch.testing.assert_close(after[: len(value)] if after.shape != value.shape else after, value, msg=key)
    for name in ("horse", "truck"):
        assert 0 < len(module.replay.samples_of(names.index(name))) <= 2, "the shots join the memory"
    images = torch.rand(6, 3, 32, 32)
    expected = DeployedCVM(module).eval()(images)
    torch.testing.assert_close(expected, module.eval().similarities(images)[:, module.seen], rtol=1e-4, atol=1e-4)
    exported = tmp_path / "proto.onnx"
    assert main(["export", "--checkpoint", str(out), "--format", "onnx", "--out", str(exported)]) == 0
    onnx_scores = Predictor(exported).similarities(images.numpy())
    torch.testing.assert_close(torch.from_numpy(onnx_scores), expected, rtol=1e-3, atol=1e-3)


def test_run_with_prototypes_keeps_every_training_image_in_its_class_mean(tmp_path):
    from cvm_lightning.deploy.export import DeployedCVM
    from cvm_lightning.deploy.predict import load_checkpoint

    data = make_image_folder(tmp_path / "data")  # 12 training images a class
    assert main(["run", *TINY_RUN, "--prototypes", "--data-root", str(data), "--out", str(tmp_path / "run")]) == 0
    module = load_checkpoint(tmp_path / "run" / "final.ckpt")
    assert module.prototypes.count.tolist() == [12.0] * 4, "each image once, replayed ones not again"
    assert module.hparams["prototypes"] and module.prototypes.active
    images = torch.rand(3, 3, 32, 32)
    sims = module.eval().similarities(images)
    features, embeddings = module.encode(images)
    plain = F.normalize(embeddings - module.prototypes.embedding_center, dim=-1) @ F.normalize(
        module.concepts - module.prototypes.embedding_center, dim=-1).T
    assert not torch.allclose(sims, plain), "the class means vote beside the concepts"
    torch.testing.assert_close(DeployedCVM(module).eval()(images), sims, rtol=1e-4, atol=1e-4)
