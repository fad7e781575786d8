"""On-disk cache of concept embeddings: safetensors, atomic writes, checksums.

One file per text-model setting (model identity, pooling, layer) holds one
embedding per concept, keyed by a hash of the concept's exact sentences
(templates and description included). Growing a bank therefore only encodes
the new concepts. Files are written to a temporary name and renamed, so a
crash never leaves a half-written cache; a file that fails its checksum is
reported, removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cvm_lightning.atomic import atomic_path
from cvm_lightning.errors import ConfigError

FORMAT_VERSION = "1"


def default_cache_dir() -> Path:
    """``$CVM_CACHE_DIR`` or ``~/.cache/cvm_lightning/concepts``."""
    root = os.environ.get("CVM_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "cvm_lightning" / "concepts"


def concept_key(sentences: Sequence[str]) -> str:
    """The cache key of one concept: a hash of the sentences that describe it."""
    return hashlib.sha256(json.dumps(list(sentences)).encode()).hexdigest()[:32]


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """A file of ``{concept_key: embedding}`` for one text-model identity."""

    def __init__(self, identity: str, cache_dir: str | Path | None = None) -> None:
        self.identity = identity
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        where = "cache_dir" if cache_dir is not None else "CVM_CACHE_DIR"
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise ConfigError(f"The concept cache folder {folder} ({where}) is blocked by the file {blocker}; "
                              "set it to a folder (or unset CVM_CACHE_DIR).")
        name = hashlib.sha256(identity.encode()).hexdigest()[:24]
        self.path = folder / f"concepts-{name}.safetensors"
        if self.path.is_dir():
            raise ConfigError(f"The concept cache file {self.path} is a folder; remove it or choose another {where}.")

    def load(self) -> dict[str, torch.Tensor]:
        """All cached embeddings; empty when the file is missing or corrupt."""
        if not self.path.exists():
            return {}
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
            if metadata.get("format") != FORMAT_VERSION or metadata.get("identity") != self.identity:
                raise ValueError("written for another text model or format")
            if metadata.get("checksum") != _checksum(tensors):
                raise ValueError("checksum mismatch")
        except (SafetensorError, ValueError, OSError) as err:
            warnings.warn(
                f"Concept cache {self.path} is corrupt ({err}); it was removed and will be rebuilt.",
                stacklevel=2,
            )
            self.path.unlink(missing_ok=True)
            return {}
        return tensors

    def save(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write ``tensors`` atomically (temporary file, then rename)."""
        tensors = {key: value.detach().cpu().float().contiguous() for key, value in tensors.items()}
        metadata = {"format": FORMAT_VERSION, "identity": self.identity, "checksum": _checksum(tensors)}
        try:
            with atomic_path(self.path, suffix=".safetensors") as tmp:
                save_file(tensors, str(tmp), metadata=metadata)
        except PermissionError as err:
            raise ConfigError(f"Cannot write the concept cache in {self.path.parent} ({err.strerror}); "
                              "set CVM_CACHE_DIR to a writable folder.") from err
