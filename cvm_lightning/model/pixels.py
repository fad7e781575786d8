"""The pixel contract of every model in this package: images in [0, 1], normalised inside the model.

Models take float images in [0, 1] (torchvision's ``ToTensor``/``ToDtype(scale=True)``)
or uint8 images in 0-255, and normalise them themselves, so a checkpoint,
``cvm predict`` and an exported file all take the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cvm_lightning.errors import DataError
from cvm_lightning.image_files import check_pixel_range
from cvm_lightning.settings import PIXEL_STATISTICS

CENTERED_MEAN, CENTERED_STD = PIXEL_STATISTICS["centered"]


class PixelNormalize(nn.Module):
    """``(x - mean) / std`` for images in [0, 1]; uint8 images are scaled to [0, 1] first. Traceable.

    ``mean`` and ``std`` are one number, or one per channel (a pretrained
    backbone's own statistics).
    """

    def __init__(
        self, mean: float | Sequence[float] = CENTERED_MEAN, std: float | Sequence[float] = CENTERED_STD
    ) -> None:
        super().__init__()
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (to_unit_range(x) - self.mean) / self.std


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 images scaled to [0, 1] floats; float images as they are."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def check_pixels(x: torch.Tensor) -> None:
    """Stop on non-finite pixels; warn when a batch is outside [0, 1] (normalised twice, most likely)."""
    if x.dtype == torch.uint8:
        return
    if not x.is_floating_point():
        raise DataError(f"Images must be float in [0, 1] or uint8 in 0-255, got {x.dtype}.")
    check_pixel_range(*(float(v) for v in torch.aminmax(x.detach())))  # one pass
