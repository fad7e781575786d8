"""``ClassPrototypes``: image evidence beside the concepts, a nearest-class-mean vote.

Each class keeps the running sum and count of its images' backbone
features. Its prototype is its mean feature minus the mean over all
classes' images, normalised. Once any class has a prototype, the score of
class ``c`` for an image with backbone features ``f`` and unit embedding
``z`` is

    cos(z - m_z, c - m_z) + cos(f - m_f, p_c)

where ``m_f`` is that mean feature, ``m_z`` the mean embedding of a
reference set (the replay memory) and ``p_c`` class ``c``'s prototype (zero
for a class without images, which is then scored by its concept alone).
The first term is the language prior, the second a vote that needs no
training. Centring removes the direction that every image shares; without
it the classes with image evidence draw every image (hubness).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassPrototypes(nn.Module):
    """Per-class feature sums and counts, the centres and the prototypes; inactive until a class has images."""

    def __init__(self, n_classes: int, feature_dim: int, concept_dim: int) -> None:
        super().__init__()
        self.register_buffer("feature_sum", torch.zeros(n_classes, feature_dim))
        self.register_buffer("count", torch.zeros(n_classes))
        self.register_buffer("feature_center", torch.zeros(feature_dim))
        self.register_buffer("embedding_center", torch.zeros(concept_dim))
        self.register_buffer("prototypes", torch.zeros(n_classes, feature_dim))

    @property
    def has_prototype(self) -> torch.Tensor:
        return self.count > 0

    @property
    def active(self) -> bool:
        """Whether any class has a prototype (else scores are the plain concept similarities)."""
        return bool(self.has_prototype.any())

    def add_classes(self, n: int) -> None:
        """Room for ``n`` more classes, without images."""
        self.feature_sum = torch.cat([self.feature_sum, self.feature_sum.new_zeros(n, self.feature_sum.shape[1])])
        self.count = torch.cat([self.count, self.count.new_zeros(n)])
        self.prototypes = torch.cat([self.prototypes, self.prototypes.new_zeros(n, self.prototypes.shape[1])])

    @torch.no_grad()
    def accumulate(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add images' features to their classes' running sums (call :meth:`update` to use them)."""
        self.feature_sum.index_add_(0, labels, features.detach().float())
        self.count.index_add_(0, labels, torch.ones_like(labels, dtype=self.count.dtype))

    @torch.no_grad()
    def update(self, reference_embeddings: torch.Tensor | None) -> None:
        """Prototypes from the sums so far; the embedding centre from ``reference_embeddings`` (``None``: none)."""
        seen = self.has_prototype
        self.feature_center.copy_(self.feature_sum[seen].sum(0) / self.count[seen].sum())
        means = self.feature_sum[seen] / self.count[seen, None]
        self.prototypes[seen] = F.normalize(means - self.feature_center, dim=-1)
        center = reference_embeddings.float().mean(0) if reference_embeddings is not None else 0.0
        self.embedding_center.copy_(torch.as_tensor(center).expand_as(self.embedding_center))

    def select(self, rows: torch.Tensor) -> "ClassPrototypes":
        """A copy that scores only classes ``rows`` (in that order), for an exported model."""
        picked = ClassPrototypes(len(rows), self.prototypes.shape[1], self.embedding_center.shape[0])
        state = self.state_dict()
        picked.load_state_dict(
            {k: v[rows] if k in ("feature_sum", "count", "prototypes") else v for k, v in state.items()}
        )
        return picked

    def vote(self, features: torch.Tensor) -> torch.Tensor:
        """The class-mean half of :meth:`scores`: centred feature similarity to each prototype (B x n_classes)."""
        with torch.autocast(features.device.type, enabled=False):
            return F.normalize(features.float() - self.feature_center, dim=-1) @ self.prototypes.T

    def scores(self, features: torch.Tensor, embeddings: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """Centred concept similarity plus prototype similarity (B x n_classes), in float32."""
        with torch.autocast(features.device.type, enabled=False):
            z = F.normalize(embeddings.float() - self.embedding_center, dim=-1)
            c = F.normalize(concepts.float() - self.embedding_center, dim=-1)
            return z @ c.T + self.vote(features)  # a class without images has a zero prototype
