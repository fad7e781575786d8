"""``ConceptSpace``: the fixed class concepts, which of them are seen, and the similarity logits."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cvm_lightning.errors import ConceptError


class ConceptSpace(nn.Module):
    """Unit concept vectors (one per class), a seen-class mask and a softmax temperature.

    ``center`` subtracts the mean of the initial embeddings before
    normalising; the same centre applies to concepts added later
    (:meth:`add`), so they live in the same geometry. Logits are cosine
    similarities divided by the temperature, with unseen classes at ``-inf``.
    """

    def __init__(self, embeddings: torch.Tensor, *, temperature: float = 0.05, learn_temperature: bool = False,
                 center: bool = True) -> None:
        super().__init__()
        n, dim = embeddings.shape
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        mean = embeddings.mean(0) if center and n > 1 else torch.zeros(dim)
        self.register_buffer("concept_center", mean)
        self.register_buffer("concepts", F.normalize(embeddings - mean, dim=-1))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def check_known(self, classes: Sequence[int]) -> None:
        """Every id in ``classes`` must have a concept."""
        unknown = sorted({c for c in classes if not 0 <= c < len(self.seen)})
        if unknown:
            raise ConceptError(
                f"Class ids {unknown} have no concept text (the concept bank has {len(self.seen)} classes, "
                f"ids 0..{len(self.seen) - 1}). Give every label a class name: extend the bank "
                "(ConceptBank.extend or CVMModule.add_concepts) or fix the labels."
            )

    def mark_seen(self, classes: Sequence[int]) -> list[int]:
        """Mark ``classes`` seen; returns those of them that were not seen before."""
        self.check_known(classes)
        classes = list(classes)
        new = [c for c, was_seen in zip(classes, self.seen[classes].tolist()) if not was_seen]
        self.seen[classes] = True
        return new

    def add(self, embeddings: torch.Tensor) -> list[int]:
        """Append concepts (rows of ``embeddings``), centred like the others and not yet seen; returns their ids."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.concepts.shape[1]:
            raise ConceptError(f"Expected embeddings of width {self.concepts.shape[1]}, got {tuple(embeddings.shape)}.")
        first = len(self.seen)
        new = F.normalize(embeddings.to(self.concepts), dim=-1) - self.concept_center
        self.concepts = torch.cat([self.concepts, F.normalize(new, dim=-1)])
        self.seen = torch.cat([self.seen, torch.zeros(len(new), dtype=torch.bool, device=self.seen.device)])
        return list(range(first, len(self.seen)))

    def mask_unseen(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with unseen classes at ``-inf`` (unchanged while nothing is seen)."""
        if not self.seen.any():
            return logits
        return logits.masked_fill(~self.seen, float("-inf"))

    def similarities(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of unit embeddings ``z`` to every concept, in float32 (also under bf16 autocast)."""
        with torch.autocast(z.device.type, enabled=False):
            return z.float() @ self.concepts.T

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Similarity over temperature, unseen classes at ``-inf``."""
        return self.mask_unseen(self.similarities(z) / self.temperature)
