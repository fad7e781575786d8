"""Alignment losses between image embeddings and class concepts.

Every loss takes unit image embeddings ``z`` (B x D), the concepts that
compete (C x D, unit rows), the targets as row indices into those concepts,
and the temperature, and returns a scalar.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AlignmentLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def concept_cross_entropy(z: torch.Tensor, concepts: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor):
    """``CE(softmax(z @ concepts.T / T), target)``: pull to the own concept, push from the others."""
    return F.cross_entropy(z @ concepts.T / temperature, target)


def cosine_regression(z: torch.Tensor, concepts: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor):
    """``mean(1 - cos(z, concept[target]))``: regress onto the own concept only."""
    return (1.0 - (z * concepts[target]).sum(-1)).mean()


LOSSES: dict[str, AlignmentLoss] = {
    "ce": concept_cross_entropy,
    "cosine": cosine_regression,
}
