"""Training-time image augmentation, applied to whole batches inside the model.

It sits in front of the backbone of every strategy's model (``CVMModule``
and the baselines' ``ClassifierNet``), so replayed samples are augmented
afresh each time they are drawn, whichever strategy stored them, and every
strategy of a run sees the same augmentation. It acts only in training mode
(BatchNorm recalibration switches it off, so statistics match test images).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvm_lightning.errors import ConfigError


def random_crop(x: torch.Tensor, pad_fraction: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``pad_fraction`` of its size, zero-filling the border (pad-and-crop)."""
    batch, _, height, width = x.shape
    pad = max(1, round(min(height, width) * pad_fraction))
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (batch, 1), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (batch, 1), device=x.device)
    rows = (dy + torch.arange(height, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(width, device=x.device))[:, None, None, :]
    samples = torch.arange(batch, device=x.device)[:, None, None, None]
    channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[samples, channels, rows, cols]


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "crop": random_crop,
    "crop-flip": lambda x: random_flip(random_crop(x)),
}


class BatchAugment(nn.Module):
    """Applies the augmentation ``name`` (see ``AUGMENTATIONS``) to training batches; identity in eval mode."""

    def __init__(self, name: str = "none") -> None:
        super().__init__()
        if name not in AUGMENTATIONS:
            raise ConfigError(f"Unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}.")
        self.name = name
        self.fn = AUGMENTATIONS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is None or not self.training:
            return x
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name
