"""Small in-memory datasets with the ``.targets`` list Avalanche expects."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from cvm_lightning.errors import DataError

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class TensorImageDataset(Dataset):
    """Images (N x C x H x W float tensor) and integer labels, with an optional transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform: Callable | None = None) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels.")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices) -> "TensorImageDataset":
        """The same dataset restricted to ``indices``."""
        return TensorImageDataset(self.images[indices], torch.tensor(self.targets)[indices], self.transform)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def uint8_to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as floats in [0, 1], the range every model of this package takes."""
    return image.float() / 255.0


def load_digits_split(test_fraction: float = 0.2) -> tuple[TensorImageDataset, TensorImageDataset]:
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn), a fixed stratified split.

    Pixels are scaled to [0, 1]; images are 1 x 8 x 8.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy((digits.images / 16.0).astype(np.float32)).unsqueeze(1)
    targets = torch.from_numpy(digits.target)
    train_idx, test_idx = train_test_split(
        np.arange(len(targets)), test_size=test_fraction, random_state=0, stratify=digits.target
    )
    return (
        TensorImageDataset(images[train_idx], targets[train_idx]),
        TensorImageDataset(images[test_idx], targets[test_idx]),
    )


class LabelledDataset(Dataset):
    """Any map-style dataset of ``(image, label)`` pairs, with the ``.targets`` list and ``subset`` a stream needs.

    Images pass through unchanged: float tensors in [0, 1] or uint8, as the
    model takes them. ``targets`` are the labels, read once.
    """

    def __init__(self, dataset, targets: list[int]) -> None:
        self.dataset, self.targets = dataset, [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices) -> "LabelledDataset":
        """The same dataset restricted to ``indices``."""
        from torch.utils.data import Subset

        indices = [int(i) for i in indices]
        return LabelledDataset(Subset(self.dataset, indices), [self.targets[i] for i in indices])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[index][0], self.targets[index]


def labelled(dataset, what: str) -> LabelledDataset:
    """``dataset`` with its labels as ``.targets``: its own ``targets`` where it has them, else read from its pairs."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise DataError(f"The {what} set must be a map-style dataset of (image, label) pairs, "
                        f"got {type(dataset).__name__}.")
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) != len(dataset):
        targets = [dataset[i][1] for i in range(len(dataset))]
    try:
        return LabelledDataset(dataset, [int(t) for t in targets])
    except (TypeError, ValueError) as err:
        raise DataError(f"The {what} set's labels must be integer class ids ({err}).") from None


def image_shape(dataset: LabelledDataset, index: int, what: str) -> tuple[int, int, int]:
    """The (channels, height, width) of image ``index``, which must be a C x H x W float or uint8 tensor."""
    image = dataset[index][0]
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DataError(f"The {what} images must be C x H x W tensors (torchvision's ToTensor() makes them), "
                        f"got {got} at index {index}.")
    if image.dtype != torch.uint8 and not image.is_floating_point():
        raise DataError(f"The {what} images must be float tensors in [0, 1] or uint8, got {image.dtype}.")
    return tuple(image.shape)


def check_finite(dataset, what: str) -> None:
    """Every float image of ``dataset`` (pairs or Avalanche triples) must hold finite pixels: the first that does
    not is named, by index, before any training."""
    tensors = getattr(getattr(dataset, "dataset", dataset), "tensors", None)
    if tensors is not None and len(dataset) == len(tensors[0]):  # a TensorDataset: one vectorised pass
        images = tensors[0]
        if images.is_floating_point():
            bad = (~torch.isfinite(images.flatten(1))).any(dim=1).nonzero().flatten()
            if len(bad):
                raise _nonfinite(what, int(bad[0]))
        return
    for index in range(len(dataset)):
        image = dataset[index][0]
        if isinstance(image, torch.Tensor) and image.is_floating_point() and not bool(torch.isfinite(image).all()):
            raise _nonfinite(what, index)


def _nonfinite(what: str, index: int) -> DataError:
    return DataError(f"{what[0].upper()}{what[1:]} image {index} holds NaN or infinite pixels; the model cannot "
                     "learn from it. Fix the decoding or transform that made it, or leave that image out.")


def stacked_pixels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``dataset`` as one uint8 N x C x H x W tensor, and its labels (a map-style dataset of pairs)."""
    images, labels = [], []
    for i in range(len(dataset)):
        image, label = dataset[i][:2]
        images.append(image if image.dtype == torch.uint8 else (image * 255).round().to(torch.uint8))
        labels.append(int(label))
    return torch.stack(images), torch.tensor(labels)
