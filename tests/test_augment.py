import pytest
import torch
import torch.nn.functional as F

from cvm_lightning.app.runner import RunConfig
from cvm_lightning.errors import ConfigError
from cvm_lightning.model import CVMModule
from cvm_lightning.model.augment import BatchAugment, random_crop, random_flip
from cvm_lightning.model.batchnorm import recalibrate_batchnorm
from cvm_lightning.training import ClassifierNet


def test_random_crop_shifts_each_image_within_the_padding():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    out = random_crop(x)
    padded = F.pad(x, (4, 4, 4, 4))
    assert out.shape == x.shape
    shifts = set()
    for image, original in zip(out, padded):
        windows = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(image, original[:, dy : dy + 32, dx : dx + 32])
        ]
        assert len(windows) == 1, "every output is exactly one 32x32 window of the zero-padded image"
        shifts.add(windows[0])
    assert len(shifts) > 20, "images in one batch get their own shifts"


def test_random_flip_mirrors_about_half_of_the_batch():
    torch.manual_seed(0)
    x = torch.randn(200, 1, 8, 8)
    out = random_flip(x)
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert (mirrored | kept).all()
    assert 70 < mirrored.sum() < 130


def test_augmentation_acts_only_in_training_mode():
    augment = BatchAugment("crop-flip")
    x = torch.randn(8, 3, 16, 16)
    assert not torch.equal(augment(x), x)
    assert torch.equal(augment.eval()(x), x)
    assert torch.equal(BatchAugment("none")(x), x)


def test_unknown_augmentation_names_the_choices():
    with pytest.raises(ConfigError, match="crop-flip"):
        BatchAugment("mixup")
    with pytest.raises(ConfigError, match="--augment"):
        RunConfig(augment="mixup")


@pytest.mark.parametrize("build", ["cvm", "baseline"])
def test_every_strategy_model_augments_its_training_batches(digit_bank, build):
    torch.manual_seed(0)
    if build == "cvm":
        model = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, input_size=16, augment="crop")
        run = model.embed
    else:
        model = ClassifierNet("reduced_resnet18", 10, in_chans=1, input_size=16, augment="crop")
        run = model
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(run(x), run(x))
    model.train()
    assert not torch.allclose(run(x), run(x)), "two training passes see two augmentations"


def test_batchnorm_recalibration_sees_unaugmented_images():
    net = torch.nn.Sequential(BatchAugment("crop"), torch.nn.BatchNorm2d(1))
    data = [torch.randn(16, 1, 8, 8) * 3 + 5 for _ in range(4)]
    recalibrate_batchnorm(net, data)
    # Zero padding would pull the mean towards 0: the pass used the images as they are.
    assert torch.allclose(net[1].running_mean, torch.cat(data).mean().view(1), atol=1e-4)
    assert net[0].training, "the augmentation's mode is restored with the model's"


def test_the_default_augmentation_is_the_benchmarks():
    assert RunConfig().augment == "none", "8x8 digits: shifts and mirror images change digits"
    assert RunConfig(benchmark="split-cifar10").augment == "crop-flip"
    assert RunConfig(benchmark="split-cifar10", augment="crop").augment == "crop"
    from cvm_lightning.app.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--benchmark", "split-cifar10"])
    assert config_from_args(args).augment == "crop-flip", "the command line leaves the choice to the benchmark"
    # A configuration saved before --augment existed describes a run without augmentation.
    assert RunConfig.from_json({"benchmark": "split-cifar10"}).augment == "none"


@pytest.mark.parametrize("views", ["crop-flip", "crop-flip-colour"])
@pytest.mark.parametrize("channels", [1, 3])
def test_scr_views_draw_each_sample_on_its_own_and_keep_pixels_in_range(views, channels):
    from cvm_lightning.training.baselines import SCR_VIEWS

    torch.manual_seed(0)
    image = torch.rand(channels, 16, 16)
    batch = image.expand(8, -1, -1, -1)  # the same image eight times
    out = SCR_VIEWS[views]()(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert 0.0 <= out.min() and out.max() <= 1.0
    distinct = {tuple(view.flatten().tolist()) for view in out}
    # One draw for the whole batch (a v2 transform given a 4-D tensor) would give one view eight times.
    assert len(distinct) == 8


def test_scr_colour_views_change_colours_that_crops_and_flips_keep():
    from cvm_lightning.training.baselines import SCR_VIEWS

    torch.manual_seed(0)
    flat = torch.tensor([0.8, 0.2, 0.3]).view(1, 3, 1, 1).expand(16, 3, 8, 8)  # one colour everywhere
    assert torch.allclose(SCR_VIEWS["crop-flip"]()(flat), flat)
    coloured = SCR_VIEWS["crop-flip-colour"]()(flat)
    assert (coloured - flat).abs().amax(dim=(1, 2, 3)).gt(0.01).sum() >= 8, "jitter at p 0.8, greyscale at p 0.2"
