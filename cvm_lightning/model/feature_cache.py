"""``FeatureCache``: a frozen backbone's features, computed once per distinct image, and kept on disk."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cvm_lightning.atomic import atomic_path

DEFAULT_MAX_BYTES = 2 * 2**30
_SHARED: dict[str, "FeatureCache"] = {}


def features_cache_dir() -> Path:
    """``$CVM_CACHE_DIR/features``, or ``~/.cache/cvm_lightning/features``."""
    root = os.environ.get("CVM_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "cvm_lightning") / "features"


def weights_digest(module: torch.nn.Module, *extra: object) -> str:
    """A digest of ``module``'s exact weights and buffers (and ``extra`` settings): the identity of its features."""
    digest = hashlib.blake2b(repr(extra).encode(), digest_size=16)
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Features keyed by each image's bytes, so every image goes through a frozen backbone once.

    Training epochs, replayed samples and every evaluation after the first
    then cost a lookup. It is exact: the same pixels give the same key, and a
    frozen backbone in eval mode gives the same features. It holds at most
    ``max_bytes`` of features; beyond that, new images are computed and not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, path: Path | None = None) -> None:
        self.max_bytes = max_bytes
        self.path = path
        self._features: dict[bytes, torch.Tensor] = {}
        self._bytes = 0
        self._saved = 0  # entries already in the file
        self.hits = 0
        self.misses = 0
        if path is not None and path.exists():
            self._load(path)

    @classmethod
    def shared(cls, digest: str) -> "FeatureCache":
        """The cache of the frozen backbone whose weights have ``digest`` (:func:`weights_digest`), kept on disk.

        Every strategy of a ``cvm run`` with a frozen backbone then shares one
        extraction per image, and later runs (other seeds, other processes)
        read the file in ``features_cache_dir()`` instead of extracting again.
        """
        if digest not in _SHARED:
            _SHARED[digest] = cls(path=features_cache_dir() / f"{digest}.safetensors")
        return _SHARED[digest]

    def _load(self, path: Path) -> None:
        try:
            stored = load_file(str(path))
            keys, features = stored["keys"], stored["features"]
        except (SafetensorError, KeyError, OSError) as err:
            warnings.warn(f"Feature cache {path} cannot be read ({err}); it will be rebuilt.", stacklevel=3)
            return
        for key, feature in zip(keys, features):
            self._features[key.numpy().tobytes()] = feature
        self._bytes = features.numel() * features.element_size()
        self._saved = len(self._features)

    def save(self) -> None:
        """Write the features to ``path`` (atomically) when new ones were computed since the last save."""
        if self.path is None or len(self._features) == self._saved:
            return
        keys = torch.frombuffer(bytearray(b"".join(self._features)), dtype=torch.uint8).view(len(self._features), -1)
        try:
            with atomic_path(self.path, suffix=".safetensors") as tmp:
                save_file({"keys": keys, "features": torch.stack(list(self._features.values()))}, str(tmp))
        except OSError as err:  # a cache: the run goes on, only the next one extracts again
            warnings.warn(f"Cannot write the feature cache {self.path} ({err}); set CVM_CACHE_DIR to a writable "
                          "folder to keep features between runs.", stacklevel=2)
            return
        self._saved = len(self._features)

    def __len__(self) -> int:
        return len(self._features)

    @staticmethod
    def _key(image: torch.Tensor, arithmetic: str) -> bytes:
        data = image.detach().cpu().contiguous()
        digest = hashlib.blake2b(f"{arithmetic}{data.dtype}{tuple(data.shape)}".encode(), digest_size=16)
        digest.update(data.numpy().tobytes())
        return digest.digest()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The features of ``images``: cached ones looked up, the others computed by ``compute`` (and kept)."""
        device = images.device.type
        # Features computed under bf16 autocast differ from float32 ones: each arithmetic has its own entries.
        arithmetic = str(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else "float32"
        keys = [self._key(image, arithmetic) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._features]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = compute(images[missing])
            for i, feature in zip(missing, fresh):
                if self._bytes + feature.numel() * feature.element_size() > self.max_bytes:
                    break
                self._features[keys[i]] = feature.cpu().clone()  # kept and saved on the CPU, whatever computed it
                self._bytes += feature.numel() * feature.element_size()
            computed = dict(zip(missing, fresh))
        else:
            computed = {}
        return torch.stack([computed[i] if i in computed else self._features[key].to(images.device)
                            for i, key in enumerate(keys)])


def save_shared_caches() -> None:
    """Write every shared cache that computed new features (``cvm run`` calls it after each strategy)."""
    for cache in _SHARED.values():
        cache.save()
