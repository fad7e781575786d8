"""Alignment losses between image embeddings and class concepts.

Every loss takes unit image embeddings ``z`` (B x D), the concepts that
compete (C x D, unit rows), the targets as row indices into those concepts,
the temperature and the margin (each loss uses what it needs), and returns
a scalar. Distances are cosine distances, ``d(a, b) = 1 - cos(a, b)``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AlignmentLoss = Callable[..., torch.Tensor]


def concept_cross_entropy(z, concepts, target, temperature, margin):
    """``CE(softmax(z @ concepts.T / T), target)``: pull to the own concept, push from the others."""
    return F.cross_entropy(z @ concepts.T / temperature, target)


def cosine_regression(z, concepts, target, temperature, margin):
    """``mean(1 - cos(z, concept[target]))``: regress onto the own concept only."""
    return (1.0 - (z * concepts[target]).sum(-1)).mean()


def _triplet_terms(z, concepts, target, margin) -> torch.Tensor:
    """``relu(d(z, c_y) - d(z, c_n) + margin)`` for every other concept ``n`` (B x C-1)."""
    distances = 1.0 - z @ concepts.T
    positive = distances.gather(1, target[:, None])
    negatives = distances.masked_select(~F.one_hot(target, len(concepts)).bool()).view(len(z), -1)
    return F.relu(positive - negatives + margin)


def triplet_all(z, concepts, target, temperature, margin):
    """Triplet loss over all negatives: ``mean_n relu(d(z, c_y) - d(z, c_n) + margin)``."""
    if len(concepts) < 2:
        return cosine_regression(z, concepts, target, temperature, margin)
    return _triplet_terms(z, concepts, target, margin).mean()


def triplet_hardest(z, concepts, target, temperature, margin):
    """Triplet loss with the hardest negative: ``relu(d(z, c_y) - min_n d(z, c_n) + margin)``."""
    if len(concepts) < 2:
        return cosine_regression(z, concepts, target, temperature, margin)
    return _triplet_terms(z, concepts, target, margin).max(dim=1).values.mean()


def semantic_distance(z, concepts, target, temperature):
    """``KL(softmax(c_y @ C.T / T) || softmax(z @ C.T / T))``: keep the language model's geometry.

    An image of class ``y`` should be as similar to each other concept as the
    concept ``c_y`` itself is in the language model's space, so images of
    "cat" stay closer to "dog" than to "truck". Added to any loss with weight
    ``semantic`` (an auxiliary term, not a loss of its own).
    """
    target_distribution = F.softmax(concepts[target] @ concepts.T / temperature, dim=-1)
    return F.kl_div(F.log_softmax(z @ concepts.T / temperature, dim=-1), target_distribution, reduction="batchmean")


# Hinton's and LwF's distillation temperature, on top of the model's own: softer targets than the sharp
# similarities the alignment loss trains (temperature 0.05), so the other classes' ranks are kept too.
DISTILLATION_TEMPERATURE = 2.0


def similarity_distillation(z, z_previous, concepts, temperature, scale=DISTILLATION_TEMPERATURE):
    """``KL(softmax(z_prev @ C.T / tT) || softmax(z @ C.T / tT)) * t^2``: answer as the model before the update did.

    Learning without Forgetting (Li and Hoiem, 2016) on concept similarities:
    the previous model's similarities of the same images to the concepts it
    knew (``concepts``) are the soft targets, at temperature ``t = scale``
    times the model's (the ``t^2`` keeps the gradient's size, as in
    Hinton et al.). Zero when the two models embed alike.

    >>> import torch
    >>> c = torch.eye(3)
    >>> z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.0]]), dim=-1)
    >>> abs(float(similarity_distillation(z, z, c, 0.05))) < 1e-6
    True
    >>> float(similarity_distillation(z, c[1:2], c, 0.05)) > 0
    True
    """
    target = F.softmax(z_previous @ concepts.T / (temperature * scale), dim=-1)
    log_p = F.log_softmax(z @ concepts.T / (temperature * scale), dim=-1)
    return F.kl_div(log_p, target, reduction="batchmean") * scale**2


LOSSES: dict[str, AlignmentLoss] = {
    "ce": concept_cross_entropy,
    "cosine": cosine_regression,
    "triplet": triplet_all,
    "triplet-hard": triplet_hardest,
}
