"""``VisualEncoder``: pixels to backbone features, the visual half every model here shares."""

from __future__ import annotations

import torch
from torch import nn

from cvm_lightning.errors import DataError
from cvm_lightning.model.augment import BatchAugment
from cvm_lightning.model.backbones import create_backbone, feature_dim, upsample_small
from cvm_lightning.model.pixels import PixelNormalize, check_pixels


class VisualEncoder(nn.Module):
    """Images in [0, 1] or uint8 -> features: pixel normalisation, training augmentation, small-image upsampling, a timm backbone.

    ``CVMModule``, the baselines' ``ClassifierNet`` and the exported
    ``DeployedCVM`` all see images through it, so every model gets the same
    input contract and the same augmentation. ``width`` is the feature width.
    """

    def __init__(
        self, backbone: str, *, pretrained: bool = False, in_chans: int = 3, input_size: int | None = None,
        augment: str = "none",
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.input_size = input_size
        self.normalize = PixelNormalize()
        self.augment = BatchAugment(augment)
        self.backbone = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans, img_size=input_size)
        self.width = feature_dim(self.backbone, in_chans, input_size or 64)

    def check_images(self, x: torch.Tensor) -> None:
        """``x`` must be a batch of ``in_chans``-channel images with pixels in [0, 1] (or uint8)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise DataError(
                f"Expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}. "
                f"Convert them to {self.in_chans} channel(s) (for example torchvision's Grayscale or "
                "Lambda(lambda img: img.convert('RGB'))) or build the model with a matching in_chans."
            )
        check_pixels(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_images(x)
        return self.backbone(upsample_small(self.augment(self.normalize(x)), self.input_size))
