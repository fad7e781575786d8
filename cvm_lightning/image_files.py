"""Image files to uint8 pixels with Pillow and NumPy alone, the same for training and for deployment.

Nothing here imports torch, so ``cvm predict`` on an ONNX file runs on
onnxruntime, NumPy and Pillow only.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from cvm_lightning.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

# What Pillow raises on a file it cannot decode: not an image, empty, truncated, or a decompression bomb
# (more pixels than Image.MAX_IMAGE_PIXELS allows twice over, which Pillow refuses before decoding).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UnreadableImageError(DataError):
    """An image file that cannot be decoded; ``path`` names it and ``reason`` says why, in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} ({reason})")
        self.path, self.reason = Path(path), reason

# Float pixels this far outside [0, 1] are taken for a second normalisation.
RANGE_TOLERANCE = 1e-3


def read_image(path: Path | BinaryIO, image_size: int | None = None, mode: str = "RGB", *,
               max_pixels: int | None = None) -> np.ndarray:
    """The pixels of image file ``path`` (or an open binary file, such as a request body) as a uint8 C x H x W array.

    The image is converted to ``mode`` (``"RGB"``, or ``"L"`` for one
    channel) and, when ``image_size`` is given and differs, resized to
    ``image_size`` x ``image_size`` with Pillow's antialiased bilinear filter.
    A file Pillow cannot decode (not an image, empty, truncated, a
    decompression bomb) raises :class:`UnreadableImageError`: every reader
    of the package names it the same way. ``max_pixels`` lowers Pillow's
    own bomb limit; the header's size is checked before anything is decoded.
    """
    try:
        with Image.open(path) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise Image.DecompressionBombError(f"decompression bomb: {image.width} x {image.height} pixels, "
                                                   f"more than the {max_pixels} allowed")
            image = image.convert(mode)
            if image_size is not None and image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.array(image)
    except _DECODE_ERRORS as err:
        named = isinstance(path, (str, Path))
        if isinstance(err, OSError) and named and not Path(path).is_file():  # gone or never there: not a bad image
            raise DataError(f"{path} does not exist.") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not named:  # Pillow names an open file by its repr: say "the data" instead
            first = first.replace(repr(path), "the data")
        raise UnreadableImageError(Path(path) if named else Path("image"), first[:160]) from None
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


def check_pixel_range(low: float, high: float) -> None:
    """Stop on non-finite pixels; warn when a batch spans more than [0, 1] (normalised twice, most likely)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError(
            "Images contain NaN or infinite values; the model cannot score them. "
            "Check the image decoding or the transform that made them."
        )
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        warnings.warn(
            f"Images range over [{low:.2f}, {high:.2f}], but models take pixels in [0, 1] (or uint8) and "
            "normalise them inside: drop any Normalize step from your transform.",
            stacklevel=4,
        )


def unit_pixels(images: np.ndarray) -> np.ndarray:
    """A batch of uint8 or [0, 1] float images (NumPy, or anything it converts) as float32 in [0, 1], checked."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"Images must be float in [0, 1] or uint8 in 0-255, got {images.dtype}.")
    check_pixel_range(float(images.min()), float(images.max()))  # NaN or inf anywhere shows in the extremes
    return images.astype(np.float32)
