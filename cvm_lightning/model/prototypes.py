"""``ClassPrototypes``: image evidence beside the concepts, for classes learned from a few images.

A class's prototype is the unit mean of its images' centred backbone
features. Once prototypes are fitted, the score of class ``c`` for an image
with backbone features ``f`` and unit embedding ``z`` is

    cos(z - m_z, c - m_z) + cos(f - m_f, p_c)

where ``m_z`` and ``m_f`` are the mean embedding and the mean feature of the
images the prototypes were fitted on, and ``p_c`` is class ``c``'s prototype
(zero for a class without images, which is then scored by its concept
alone). The first term is the language prior, the second a nearest-class-
mean vote that needs no training. Centring removes the direction that every
image shares; without it the classes with image evidence draw every image
(hubness).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassPrototypes(nn.Module):
    """Per-class mean features and the centres of the fitted images; inactive until :meth:`fit`."""

    def __init__(self, n_classes: int, feature_dim: int, concept_dim: int) -> None:
        super().__init__()
        self.register_buffer("feature_center", torch.zeros(feature_dim))
        self.register_buffer("embedding_center", torch.zeros(concept_dim))
        self.register_buffer("prototypes", torch.zeros(n_classes, feature_dim))
        self.register_buffer("has_prototype", torch.zeros(n_classes, dtype=torch.bool))

    @property
    def active(self) -> bool:
        """Whether any class has a prototype (else scores are the plain concept similarities)."""
        return bool(self.has_prototype.any())

    def add_classes(self, n: int) -> None:
        """Room for ``n`` more classes, without prototypes."""
        self.prototypes = torch.cat([self.prototypes, self.prototypes.new_zeros(n, self.prototypes.shape[1])])
        self.has_prototype = torch.cat([self.has_prototype, self.has_prototype.new_zeros(n)])

    @torch.no_grad()
    def fit(self, features: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Centres from all the given images; a prototype for each class among ``labels`` (others are cleared)."""
        features, embeddings = features.float(), embeddings.float()
        self.feature_center.copy_(features.mean(0))
        self.embedding_center.copy_(embeddings.mean(0))
        centred = F.normalize(features - self.feature_center, dim=-1)
        self.prototypes.zero_()
        self.has_prototype.zero_()
        for c in labels.unique().tolist():
            self.prototypes[c] = F.normalize(centred[labels == c].sum(0), dim=0)
            self.has_prototype[c] = True

    def select(self, rows: torch.Tensor) -> "ClassPrototypes":
        """A copy that scores only classes ``rows`` (in that order), for an exported model."""
        picked = ClassPrototypes(len(rows), self.prototypes.shape[1], self.embedding_center.shape[0])
        picked.load_state_dict({"feature_center": self.feature_center, "embedding_center": self.embedding_center,
                                "prototypes": self.prototypes[rows], "has_prototype": self.has_prototype[rows]})
        return picked

    def scores(self, features: torch.Tensor, embeddings: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """Centred concept similarity plus prototype similarity (B x n_classes), in float32."""
        with torch.autocast(features.device.type, enabled=False):
            z = F.normalize(embeddings.float() - self.embedding_center, dim=-1)
            c = F.normalize(concepts.float() - self.embedding_center, dim=-1)
            f = F.normalize(features.float() - self.feature_center, dim=-1)
            return z @ c.T + f @ self.prototypes.T  # a class without images has a zero prototype
