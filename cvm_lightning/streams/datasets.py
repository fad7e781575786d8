"""Small in-memory datasets with the ``.targets`` list Avalanche expects."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

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
