import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.errors import ConceptError, ConfigError, DataError, TrainingDivergedError
from cvm_lightning.model import CVMModule, create_backbone, feature_dim
from cvm_lightning.streams.datasets import load_digits_split


def quiet_trainer(**kwargs):
    kwargs.setdefault("max_epochs", 1)
    return pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
    )


def small_module(bank, **kwargs):
    kwargs.setdefault("backbone", "mobilenetv3_small_050")
    kwargs.setdefault("buffer_size", 0)
    return CVMModule(bank, in_chans=1, input_size=16, **kwargs)


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(ConfigError, match="mobilenetv3_small_100"):
        create_backbone("mobilenetv3_smal_100")


def test_feature_width_is_measured_not_read():
    backbone = create_backbone("mobilenetv3_small_100")
    assert backbone.num_features == 576
    assert feature_dim(backbone, 3, 32) == 1024


def test_vit_gets_img_size_for_small_images(digit_bank):
    module = CVMModule(
        digit_bank, backbone="vit_tiny_patch16_224", in_chans=1, input_size=32, head="linear", buffer_size=0
    )
    logits = module(torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 10)


def test_logits_are_scaled_similarities_over_seen_classes(digit_bank):
    module = small_module(digit_bank).eval()
    x = torch.rand(4, 1, 8, 8)
    sims = module.similarities(x)
    assert sims.shape == (4, 10) and sims.abs().max() <= 1.0 + 1e-5
    assert torch.allclose(module(x), sims / module.temperature, atol=1e-4), "nothing seen yet: all classes compete"
    module.start_experience([3, 7], experience=0)
    logits = module(x)
    assert torch.isinf(logits[:, [0, 1, 2, 4, 5, 6, 8, 9]]).all()
    assert set(logits.argmax(1).tolist()) <= {3, 7}


def test_wrong_image_channels_name_the_fix(digit_bank):
    module = small_module(digit_bank)
    with pytest.raises(DataError, match="channel"):
        module(torch.randn(2, 3, 8, 8))
    with pytest.raises(DataError, match="shape"):
        module(torch.randn(8, 8))


def test_labels_without_concepts_are_rejected(digit_bank):
    module = small_module(digit_bank)
    with pytest.raises(ConceptError, match="no concept text"):
        module.start_experience([4, 12])
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.tensor([0, 1, 2, 3, 10, 11, 0, 1]))
    with pytest.raises(ConceptError, match="10, 11"):
        quiet_trainer(max_steps=1).fit(module, DataLoader(data, batch_size=8))


def test_nan_loss_stops_with_experience_and_step(digit_bank):
    module = small_module(digit_bank)
    module.start_experience([0, 1], experience=3)
    torch.nn.init.constant_(module.head.proj.weight, float("inf"))  # finite images, diverging weights
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.tensor([0, 1] * 4))
    with pytest.raises(TrainingDivergedError, match="experience 3, step 0"):
        quiet_trainer(max_steps=1).fit(module, DataLoader(data, batch_size=8))


@pytest.mark.slow
def test_digits_iid_accuracy_with_a_plain_trainer(digit_bank):
    pl.seed_everything(0)
    train, test = load_digits_split()
    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, input_size=None, buffer_size=0)
    trainer = quiet_trainer(max_epochs=3)
    trainer.fit(module, DataLoader(train, batch_size=64, shuffle=True))
    accuracy = trainer.validate(module, DataLoader(test, batch_size=256), verbose=False)[0]["val/acc"]
    assert accuracy >= 0.9


def test_predict_step_returns_ids_names_and_similarity(digit_bank):
    module = small_module(digit_bank).eval()
    module.start_experience([2, 5])
    out = module.predict_step(torch.rand(3, 1, 8, 8), 0)
    assert out["class_ids"].shape == (3,)
    assert all(name in ("two", "five") for name in out["class_names"])
    assert out["similarity"].shape == (3,) and out["similarity"].abs().max() <= 1.0 + 1e-5


def test_checkpoint_round_trip_keeps_concepts_seen_classes_and_replay(digit_bank, tmp_path):
    pl.seed_everything(0)
    train, _ = load_digits_split()
    module = small_module(digit_bank, buffer_size=40, learn_temperature=True)
    module.start_experience([0, 1, 2], experience=0)
    trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(train, batch_size=32, shuffle=True))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, weights_only=True)  # no pickle of arbitrary objects
    assert "cvm_replay" in raw
    restored = CVMModule.load_from_checkpoint(path).eval()
    module.eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(restored(x), module(x), atol=1e-5)
    assert torch.equal(restored.seen, module.seen)
    assert restored.class_names == digit_bank.class_names
    assert len(restored.replay) == len(module.replay) > 0
    assert restored.current_experience == 0


def test_added_concepts_survive_checkpoints(digit_bank, tmp_path):
    module = small_module(digit_bank)
    ids = module.add_concepts(["ten"], torch.randn(1, digit_bank.dim))
    assert ids == [10]
    trainer = quiet_trainer(max_steps=1, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorDataset(torch.rand(4, 1, 8, 8), torch.tensor([10, 0, 10, 0])), batch_size=4))
    trainer.save_checkpoint(tmp_path / "grown.ckpt")
    restored = CVMModule.load_from_checkpoint(tmp_path / "grown.ckpt")
    assert restored.class_names[-1] == "ten" and restored.concepts.shape == (11, digit_bank.dim)
    assert torch.equal(restored.concepts, module.concepts) and restored.hparams["class_names"] == digit_bank.class_names
    # A model of the same classes grows to the checkpoint's (Trainer.fit(ckpt_path=...) resumes it) ...
    same = small_module(digit_bank)
    same.on_load_checkpoint(torch.load(tmp_path / "grown.ckpt", weights_only=True))
    assert same.class_names == [*digit_bank.class_names, "ten"] and same.concepts.shape == (11, digit_bank.dim)
    # ... but a model of other classes is refused.
    other = ConceptBank.from_names([f"digit {n}" for n in range(10)], text_model="random")
    with pytest.raises(ConceptError, match="another concept bank"):
        small_module(other).on_load_checkpoint(torch.load(tmp_path / "grown.ckpt", weights_only=True))


def test_checkpoints_of_earlier_versions_keep_their_grown_classes_and_image_size(digit_bank, tmp_path):
    """Checkpoints written before the grown state left the hyperparameters still load with every class."""
    module = small_module(digit_bank)
    module.add_concepts(["ten"], torch.randn(1, digit_bank.dim))
    old_style = {"state_dict": module.state_dict(), "pytorch-lightning_version": "2.6.0",
                 "hyper_parameters": {**module.hparams, "class_names": module.class_names, "image_size": 12},
                 "cvm_state": {"current_experience": 3}}
    torch.save(old_style, tmp_path / "old.ckpt")
    restored = CVMModule.load_from_checkpoint(tmp_path / "old.ckpt")
    assert restored.class_names == module.class_names and restored.image_size == 12
    assert restored.current_experience == 3 and torch.equal(restored.concepts, module.concepts)


def test_hyperparameters_are_settled_at_construction(digit_bank):
    """Training and adding classes change the model's state, never its hyperparameters."""
    module = small_module(digit_bank)
    before = dict(module.hparams)
    module.add_concepts(["ten"], torch.randn(1, digit_bank.dim))
    module.start_experience([0, 10])
    module.training_loss(torch.rand(4, 1, 8, 8), torch.tensor([0, 10, 0, 10]), offer=False)
    assert dict(module.hparams) == before
    assert module.class_names[-1] == "ten" and module.image_size == 8


def test_bad_options_are_config_errors(digit_bank):
    for kwargs in ({"loss": "hinge"}, {"optimizer": "lbfgs"}, {"head": "conv"}, {"negatives": "none"}):
        with pytest.raises(ConfigError):
            small_module(digit_bank, **kwargs)


def test_batchnorm_recalibration_matches_the_data_statistics():
    from cvm_lightning.model.batchnorm import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    data = [torch.randn(16, 1, 4, 4) * 3 + 5 for _ in range(4)]
    assert recalibrate_batchnorm(net, data) == 1
    conv_out = net[0](torch.cat(data))
    assert not net.training, "the mode is restored"
    assert torch.allclose(net[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)
    assert net[1].momentum == 0.1


def test_cosine_schedule_anneals_over_each_fit(digit_bank):
    module = small_module(digit_bank, scheduler="cosine", lr=0.01)
    data = DataLoader(TensorDataset(torch.rand(32, 1, 8, 8), torch.tensor([0, 1] * 16)), batch_size=8)
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(module, data)
    first_lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert first_lr < 0.001, "annealed to near zero by the end of the fit"
    trainer.fit_loop.max_epochs = 4  # the next experience restarts the schedule
    trainer.fit(module, data)
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 2 * 4


@pytest.mark.parametrize("size", [32, 64])
def test_reduced_resnet18_is_small_and_trains_on_small_images(digit_bank, size):
    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=3, buffer_size=0)
    backbone_params = sum(p.numel() for p in module.backbone.parameters())
    assert 1.0e6 < backbone_params < 1.2e6
    data = TensorDataset(torch.rand(16, 3, size, size), torch.tensor([0, 1] * 8))
    before = [p.detach().clone() for p in module.backbone.parameters()]
    quiet_trainer(max_steps=2).fit(module, DataLoader(data, batch_size=8))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.backbone.parameters()))


def test_centred_concepts_spread_apart_and_added_ones_share_the_centre(digit_bank):
    raw = small_module(digit_bank, center_concepts=False)
    centred = small_module(digit_bank)
    off_diagonal = ~torch.eye(10, dtype=torch.bool)
    assert torch.allclose(raw.concepts, digit_bank.embeddings)
    assert (centred.concepts @ centred.concepts.T)[off_diagonal].mean() < (raw.concepts @ raw.concepts.T)[
        off_diagonal
    ].mean() - 0.2
    assert torch.allclose(centred.concepts.norm(dim=1), torch.ones(10))
    new = torch.nn.functional.normalize(torch.randn(1, digit_bank.dim), dim=-1)
    centred.add_concepts(["ten"], new)
    expected = torch.nn.functional.normalize(new[0] - digit_bank.embeddings.mean(0), dim=0)
    assert torch.allclose(centred.concepts[10], expected, atol=1e-6)


def test_asymmetric_loss_keeps_new_samples_off_old_concepts(digit_bank):
    module = small_module(digit_bank, buffer_size=10)  # negatives="asymmetric" is the default
    module.start_experience([0, 1], experience=0)
    module.start_experience([2, 3], experience=1)
    y = torch.tensor([2, 3, 2, 0, 1, 2])  # 3 new samples, then 3 replayed (current class 2 included)
    z = torch.nn.functional.normalize(torch.randn(6, digit_bank.dim), dim=-1).requires_grad_()
    module.batch_loss(z, y, n_new=3).backward()
    # CE's gradient on an embedding is a combination of the concepts that compete for it.
    new_span = module.concepts[[2, 3]]
    residual = z.grad[:3] - z.grad[:3] @ torch.linalg.pinv(new_span) @ new_span
    assert residual.abs().max() < 1e-5, "new samples are pushed only among their batch's classes"
    old_part = z.grad[3:] - z.grad[3:] @ torch.linalg.pinv(new_span) @ new_span
    assert old_part.abs().max() > 1e-3, "replayed samples compete with the old concepts too"
    module.replay.add(torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 2, 2]), torch.randn(4, digit_bank.dim))
    _, mixed_y, _ = module.mix_replay(torch.randn(32, 1, 8, 8), torch.full((32,), 2))
    assert 2 in mixed_y[32:].tolist(), "the replayed part holds current classes, where they meet old ones"
    symmetric = small_module(digit_bank, negatives="seen")
    symmetric.start_experience([0, 1, 2, 3])
    assert torch.allclose(module.batch_loss(z, y, n_new=6), symmetric.batch_loss(z, y, n_new=6)), (
        "no replay: plain loss"
    )


def test_reduced_resnet18_is_a_timm_model():
    import timm

    assert timm.is_model("reduced_resnet18")
    classifier = timm.create_model("reduced_resnet18", num_classes=10, in_chans=1)
    assert classifier(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    features = timm.create_model("reduced_resnet18", num_classes=0)
    assert features(torch.rand(2, 3, 32, 32)).shape == (2, 160)


def test_checkpoints_with_the_flat_layout_of_earlier_versions_still_load(digit_bank, tmp_path):
    """Before the encoder and concept space were submodules, their keys sat at the top of the state dict."""
    module = small_module(digit_bank)
    module.start_experience([0, 1])
    flat = {}
    for key, value in module.state_dict().items():
        flat[key.removeprefix("space.").removeprefix("encoder.")] = value
    assert any(k.startswith("backbone.") for k in flat) and "concepts" in flat
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": flat, "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    loaded = CVMModule.load_from_checkpoint(path)
    assert loaded.seen.tolist() == module.seen.tolist()
    torch.testing.assert_close(loaded.concepts, module.concepts)
    torch.testing.assert_close(loaded.state_dict(), module.state_dict())


@pytest.mark.parametrize("order", ["cvm_lightning first", "timm first"])
def test_import_cvm_lightning_registers_its_backbones_with_timm(order):
    """``import cvm_lightning`` alone makes ``timm.create_model("reduced_resnet18")`` work, and loads no timm itself."""
    import subprocess
    import sys

    imports = "import cvm_lightning, timm" if order == "cvm_lightning first" else "import timm, cvm_lightning"
    code = (
        "import sys, importlib.util; import cvm_lightning\n"
        "assert 'timm' not in sys.modules and 'torch' not in sys.modules\n"
        "assert importlib.util.find_spec('timm') is not None  # a probe, as transformers makes, imports nothing\n"
        if order == "cvm_lightning first" else ""
    ) + f"{imports}\nmodel = timm.create_model('reduced_resnet18', num_classes=0)\nprint(type(model).__name__)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ReducedResNet18"


def test_reduced_resnet18_is_avalanches_slim_resnet18_parameter_for_parameter():
    """The backbone of Avalanche's reference baselines (SlimResNet18, nf = 20): same tensors, same numbers.

    Drawn from the same seed they get the same weights, and from there they
    compute the same bits forward and backward: one rounding apart is enough
    for two runs of the reference protocols' SGD to part within a few steps.
    """
    from avalanche.models import SlimResNet18

    torch.manual_seed(0)
    ours = create_backbone("reduced_resnet18")
    torch.manual_seed(0)
    slim = SlimResNet18(10)
    slim.linear = torch.nn.Identity()  # the pooled 160-d features its classifier reads
    ours_state, slim_state = ours.state_dict(), slim.state_dict()
    assert [t.shape for t in ours_state.values()] == [t.shape for t in slim_state.values()]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in slim.parameters()) == 1_093_140
    assert all(torch.equal(a, b) for a, b in zip(ours_state.values(), slim_state.values()))
    x = torch.rand(10, 3, 32, 32)
    ours_out, slim_out = ours(x), slim(x)
    assert torch.equal(ours_out, slim_out)
    ours_out.square().sum().backward()
    slim_out.square().sum().backward()
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), slim.parameters()))


def test_a_growing_head_scores_only_the_classes_it_has_trained():
    from avalanche.models.dynamic_modules import avalanche_model_adaptation

    from cvm_lightning.training import ClassifierNet

    net = ClassifierNet("reduced_resnet18", 10, input_size=32, growing_head=True)
    x = torch.rand(3, 3, 32, 32)
    assert net(x).shape == (3, 10), "one column per class id, however many units the head has grown"
    experience = type("Experience", (), {"classes_in_this_experience": [2, 3]})()
    net.train()
    avalanche_model_adaptation(net, experience)
    out = net(x)
    assert net.classifier.classifier.out_features == 4
    assert (out[:, [0, 1, *range(4, 10)]] == -1000).all() and (out[:, [2, 3]] != -1000).all()


@pytest.mark.parametrize("name,optimizer_class,momentum", [("sgd", torch.optim.SGD, 0.0), ("adamw", torch.optim.AdamW,
                                                                                           None)])
def test_every_strategys_optimizer_comes_from_one_registry(digit_bank, name, optimizer_class, momentum):
    from cvm_lightning.model.optimizers import create_optimizer

    module = small_module(digit_bank, optimizer=name, momentum=0.0, lr=0.1, weight_decay=0.0)
    built = module.build_optimizer()
    assert type(built) is optimizer_class and built.defaults["lr"] == 0.1
    assert built.defaults.get("momentum") == momentum
    same = create_optimizer(name, module.parameters(), lr=0.1, weight_decay=0.0, momentum=0.0)
    assert type(same) is optimizer_class


def test_normalize_picks_the_pixel_statistics_a_backbone_trained_here_uses():
    from cvm_lightning.model import VisualEncoder
    from cvm_lightning.settings import PIXEL_STATISTICS

    encoder = VisualEncoder("reduced_resnet18", input_size=32, normalize="cifar10-avalanche")
    mean, std = PIXEL_STATISTICS["cifar10-avalanche"]
    assert std == (0.2023, 0.1994, 0.2010), "the statistics of Avalanche's CIFAR transforms"
    assert encoder.normalize.mean.flatten().tolist() == pytest.approx(mean)
    assert encoder.normalize.std.flatten().tolist() == pytest.approx(std)
    with pytest.raises(ConfigError, match="Unknown --normalize 'imagenet'"):
        VisualEncoder("reduced_resnet18", normalize="imagenet")


def test_replay_shares_give_each_class_in_the_memory_a_share_of_the_batch(digit_bank):
    """With replay_shares a batch of one new class replays as many samples of each class in the memory as it brings
    of its own; without, only as many in all."""
    sizes = {}
    for shares in (False, True):
        module = small_module(digit_bank, negatives="seen", buffer_size=200, replay_shares=shares)
        module.start_experience([0, 1, 2, 3], experience=0)
        module.replay.add(torch.rand(80, 1, 8, 8), torch.tensor([0, 1, 2, 3] * 20), torch.rand(80, digit_bank.dim))
        module.start_experience([4], experience=1)
        _, y, _ = module.mix_replay(torch.rand(15, 1, 8, 8), torch.full((15,), 4))
        sizes[shares] = len(y) - 15
        assert 4 not in y[15:].tolist()
    assert sizes == {False: 15, True: 60}


def test_replay_keeps_known_classes_older_samples_when_they_come_back(digit_bank):
    """Under negatives="seen" the classes an experience brings new stay out of replay, but classes that come
    back (a domain-incremental stream, an update on site) are replayed: their stored samples are the old conditions."""
    module = small_module(digit_bank, negatives="seen", buffer_size=40)
    module.start_experience([0, 1], experience=0)
    module.replay.add(torch.rand(20, 1, 8, 8), torch.tensor([0, 1] * 10), torch.rand(20, module.concepts.shape[1]))
    module.start_experience([2, 3], experience=1)  # class-incremental: 2 and 3 are new
    module.replay.add(torch.rand(10, 1, 8, 8), torch.tensor([2, 3] * 5), torch.rand(10, module.concepts.shape[1]))
    _, y, _ = module.mix_replay(torch.rand(30, 1, 8, 8), torch.full((30,), 2))
    assert set(y[30:].tolist()) == {0, 1}, "the current experience's new classes are not replayed"
    module.start_experience([0, 1, 2, 3], experience=2)  # the same classes again, under a new condition
    _, y, _ = module.mix_replay(torch.rand(60, 1, 8, 8), torch.full((60,), 0))
    assert set(y[60:].tolist()) == {0, 1, 2, 3}
