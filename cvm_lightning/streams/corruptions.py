"""Deterministic image corruptions: the conditions of the domain-incremental streams.

Each corruption takes a batch of images (N x C x H x W floats in [0, 1])
and a seeded ``torch.Generator`` (only ``noise`` draws from it) and returns
the corrupted batch in [0, 1]. The same images, condition and seed always
give the same pixels. They model what changes on a site: the light, the
camera's focus and sensor, the white balance, the compression.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
import torch
from PIL import Image

from cvm_lightning.errors import ConfigError, did_you_mean

Corruption = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {}

# ITU-R 601 luma weights, the grey level Pillow's ImageEnhance.Contrast uses.
LUMA = (0.299, 0.587, 0.114)


def register_corruption(name: str) -> Callable[[Corruption], Corruption]:
    """Decorator: make ``corruption`` a condition of the domain-incremental streams."""

    def wrap(corruption: Corruption) -> Corruption:
        CORRUPTIONS[name] = corruption
        return corruption

    return wrap


@register_corruption("clean")
def clean(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images


@register_corruption("dark")
def dark(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return images * 0.45


@register_corruption("low contrast")
def low_contrast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    grey = _grey(images).mean(dim=(1, 2, 3), keepdim=True)
    return grey + (images - grey) * 0.35


@register_corruption("blur")
def blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.v2.functional import gaussian_blur

    return gaussian_blur(images, kernel_size=5, sigma=1.2)


@register_corruption("noise")
def noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (images + 0.1 * torch.randn(images.shape, generator=generator)).clamp(0, 1)


@register_corruption("colour cast")
def colour_cast(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if images.shape[1] != 3:
        raise ConfigError("The colour cast condition needs RGB images.")
    return (images * torch.tensor([1.25, 1.0, 0.7]).view(1, 3, 1, 1)).clamp(0, 1)


@register_corruption("jpeg")
def jpeg(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.stack([_jpeg_round_trip(image, quality=8) for image in images])


def _grey(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] != 3:
        return images
    return sum(w * images[:, c : c + 1] for c, w in enumerate(LUMA))


def _jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded.reshape(pixels.shape)).permute(2, 0, 1)


def check_conditions(conditions: list[str] | tuple[str, ...]) -> None:
    """Refuse an unknown condition name, naming the known ones."""
    for name in conditions:
        if name not in CORRUPTIONS:
            raise ConfigError(f"Unknown condition {name!r}.{did_you_mean(name, CORRUPTIONS)} "
                              f"Available: {', '.join(CORRUPTIONS)}.")


def corrupt(images: torch.Tensor, condition: str, seed: int, chunk: int = 1024) -> torch.Tensor:
    """``images`` (N x C x H x W, uint8 or floats in [0, 1]) under ``condition``, as uint8 pixels.

    Deterministic: ``seed`` seeds the one generator the condition draws from,
    and the images are processed in a fixed order.
    """
    check_conditions([condition])
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(images.shape, dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        batch = images[start : start + chunk]
        batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
        corrupted = CORRUPTIONS[condition](batch, generator).clamp(0, 1)
        out[start : start + chunk] = (corrupted * 255).round().to(torch.uint8)
    return out
