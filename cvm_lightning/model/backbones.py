"""Visual backbones: any model in timm's registry (``reduced_resnet18`` included).

A custom backbone is registered the timm way, with ``timm.models.register_model``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from cvm_lightning.errors import ConfigError, did_you_mean
from cvm_lightning.model.pretrained import find_pretrained_file


def _unknown_backbone(name: str) -> ConfigError:
    return ConfigError(
        f"Unknown backbone {name!r}.{did_you_mean(name, timm.list_models())} "
        "Any name from `timm.list_models()` works (reduced_resnet18 included); "
        "register your own with timm.models.register_model."
    )


def check_backbone(name: str) -> None:
    """``name`` must be a model in timm's registry (checked without building it)."""
    if not timm.is_model(name):
        raise _unknown_backbone(name)


def create_backbone(
    name: str, *, pretrained: bool = False, pretrained_file: str | Path | None = None, in_chans: int = 3,
    img_size: int | None = None,
) -> nn.Module:
    """A feature extractor (no classifier) for ``name``.

    timm models are created with ``num_classes=0``; ``img_size`` is passed to
    models that take it (ViTs, MLP-mixers), which need it for small inputs.
    With ``pretrained``, the weights come from a local file when there is
    one (``pretrained_file``, or an installed weights package: see
    :mod:`cvm_lightning.model.pretrained`), through timm's
    ``pretrained_cfg_overlay=dict(file=...)``; otherwise from timm's own source.
    """
    check_backbone(name)
    kwargs: dict = {"pretrained": pretrained, "num_classes": 0, "in_chans": in_chans}
    if pretrained:
        local = find_pretrained_file(name, pretrained_file)
        if local is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
    if img_size is not None and _takes_img_size(name):
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, **kwargs)
    except (RuntimeError, OSError) as err:  # pretrained weights missing offline
        raise ConfigError(
            f"Could not load pretrained weights for backbone {name!r} ({' '.join(str(err).split())[:200]}). "
            "Pass --pretrained-file with a timm state dict of it, put the weights in the Hugging Face cache "
            "(HF_HOME) on a machine with internet first, or train from scratch (--no-pretrained)."
        ) from err
    if kwargs.get("pretrained_cfg_overlay"):
        _check_weights_fit(model, name, Path(kwargs["pretrained_cfg_overlay"]["file"]))
    return model


def _check_weights_fit(model: nn.Module, name: str, path: Path) -> None:
    # Without a classifier timm loads non-strictly, so a file of another model would load nothing, silently.
    held = set(timm.models.load_state_dict(str(path)))
    missing = [k for k in model.state_dict() if k not in held and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"--pretrained-file {path} does not hold the weights of {name}: {len(missing)} of its tensors are "
            f"missing (for example {missing[0]}). Pass a timm state dict of {name}."
        )


def pretrained_normalization(backbone: nn.Module, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std of a pretrained timm backbone's inputs (in [0, 1] units)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    mean, std = tuple(cfg.get("mean", (0.5,))), tuple(cfg.get("std", (0.5,)))
    if len(mean) != in_chans:  # timm sums the first convolution over channels: average the statistics alike
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return mean, std


# timm entrypoints all take **kwargs, so the signature does not tell; the
# models that need img_size are the patch-embedding families.
PATCH_EMBEDDING_FAMILIES = ("vit", "deit", "beit", "eva", "mixer", "swin", "cait", "xcit", "levit", "pit", "tnt")


def _takes_img_size(name: str) -> bool:
    return name.split("_")[0].startswith(PATCH_EMBEDDING_FAMILIES)


def upsample_small(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Images smaller than ``size`` (either side) resized to ``size`` x ``size``; others unchanged.

    Standard timm stems downsample 32x; without this a 32x32 input becomes 1x1.
    """
    if size and min(x.shape[-2:]) < size:
        return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def feature_dim(backbone: nn.Module, in_chans: int, input_size: int) -> int:
    """Width of the backbone's pooled features, found with a dummy forward.

    ``num_features`` is wrong for models with a pre-logits stage (for example
    mobilenetv3 reports 576 but outputs 1024), so we measure instead.
    """
    was_training = backbone.training
    backbone.eval()
    out = backbone(torch.zeros(1, in_chans, input_size, input_size))
    backbone.train(was_training)
    if out.ndim != 2:
        raise ConfigError(f"Backbone output has shape {tuple(out.shape)}; expected pooled (batch, features).")
    return int(out.shape[1])
