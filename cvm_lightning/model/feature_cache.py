"""``FeatureCache``: a frozen backbone's features, computed once per distinct image."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

DEFAULT_MAX_BYTES = 2 * 2**30
_SHARED: dict[tuple, "FeatureCache"] = {}


class FeatureCache:
    """Features keyed by each image's bytes, so every image goes through a frozen backbone once.

    Training epochs, replayed samples and every evaluation after the first
    then cost a lookup. It is exact: the same pixels give the same key, and a
    frozen backbone in eval mode gives the same features. It holds at most
    ``max_bytes`` of features; beyond that, new images are computed and not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._features: dict[bytes, torch.Tensor] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @classmethod
    def shared(cls, key: tuple) -> "FeatureCache":
        """The process's cache for frozen backbones that are the same (``key``: backbone, weights, input).

        Every strategy of a ``cvm run`` with a frozen backbone then shares one
        extraction per image: the features are the same for all of them.
        """
        return _SHARED.setdefault(key, cls())

    def __len__(self) -> int:
        return len(self._features)

    @staticmethod
    def _key(image: torch.Tensor) -> bytes:
        data = image.detach().cpu().contiguous()
        digest = hashlib.blake2b(f"{data.dtype}{tuple(data.shape)}".encode(), digest_size=16)
        digest.update(data.numpy().tobytes())
        return digest.digest()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The features of ``images``: cached ones looked up, the others computed by ``compute`` (and kept)."""
        keys = [self._key(image) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = compute(images[missing])
            for i, feature in zip(missing, fresh):
                if self._bytes + feature.numel() * feature.element_size() > self.max_bytes:
                    break
                self._features[keys[i]] = feature.clone()
                self._bytes += feature.numel() * feature.element_size()
            computed = dict(zip(missing, fresh))
        else:
            computed = {}
        return torch.stack([computed[i] if i in computed else self._features[key] for i, key in enumerate(keys)])
