"""``VisualEncoder``: pixels to backbone features, the visual half every model here shares."""

from __future__ import annotations

import torch
from torch import nn

from cvm_lightning.errors import DataError
from cvm_lightning.model.augment import BatchAugment
from cvm_lightning.model.backbones import create_backbone, feature_dim, pretrained_normalization, upsample_small
from cvm_lightning.model.feature_cache import FeatureCache, weights_digest
from cvm_lightning.model.pixels import PixelNormalize, check_pixels
from cvm_lightning.settings import PIXEL_STATISTICS, check_settings


class VisualEncoder(nn.Module):
    """Images in [0, 1] or uint8 -> features.

    Pixel normalisation, training augmentation, small-image upsampling, then a timm backbone.

    ``CVMModule``, the baselines' ``ClassifierNet`` and the exported
    ``DeployedCVM`` all see images through it, so every model gets the same
    input contract and the same augmentation. ``width`` is the feature width.

    A pretrained backbone normalises with its own statistics (timm's
    ``pretrained_cfg``); one trained here with ``normalize``'s
    (:data:`~cvm_lightning.settings.PIXEL_STATISTICS`: [0, 1] to [-1, 1] by default). With
    ``freeze``, the backbone stays in eval mode, is never trained, and its
    features are computed once per distinct image (:class:`FeatureCache`).
    ``channels_last`` keeps the backbone's weights and inputs in
    channels-last memory order.
    """

    def __init__(
        self, backbone: str, *, pretrained: bool = False, pretrained_file: str | None = None, in_chans: int = 3,
        input_size: int | None = None, normalize: str = "centered", augment: str = "none", freeze: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_settings({"pretrained": pretrained, "pretrained_file": pretrained_file, "freeze_backbone": freeze,
                        "normalize": normalize, "augment": augment, "in_chans": in_chans, "input_size": input_size})
        self.in_chans = in_chans
        self.input_size = input_size
        self.augment = BatchAugment(augment)
        self.backbone = create_backbone(
            backbone, pretrained=pretrained, pretrained_file=pretrained_file, in_chans=in_chans, img_size=input_size
        )
        statistics = pretrained_normalization(self.backbone, in_chans) if pretrained else PIXEL_STATISTICS[normalize]
        self.normalize = PixelNormalize(*statistics)
        self.width = feature_dim(self.backbone, in_chans, input_size or 64)
        self.channels_last = channels_last
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.frozen = freeze
        self.features: FeatureCache | None = None
        if freeze:
            # Pretrained weights are the same in every model built from them, so their features are shared and kept.
            self.features = (
                FeatureCache.shared(weights_digest(self.backbone, backbone, input_size))
                if pretrained
                else FeatureCache()
            )
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> "VisualEncoder":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # pretrained BatchNorm statistics stay as they are
        return self

    def check_images(self, x: torch.Tensor) -> None:
        """``x`` must be a batch of ``in_chans``-channel images with pixels in [0, 1] (or uint8)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise DataError(
                f"Expected images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}. "
                f"Convert them to {self.in_chans} channel(s) (for example torchvision's Grayscale or "
                "Lambda(lambda img: img.convert('RGB'))) or build the model with a matching in_chans."
            )
        check_pixels(x)

    def _backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        x = upsample_small(self.augment(self.normalize(x)), self.input_size)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).float()  # float32 features even under bf16 autocast: the heads compare them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_images(x)
        if self.features is not None:
            return self.features(x, self._backbone_features)
        return self._backbone_features(x)
