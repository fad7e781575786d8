"""The concept-alignment head: visual features -> unit vectors in concept space."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cvm_lightning.settings import DEFAULT_HEAD, check_choice

# The projections by name (the settings layer's ``head`` vocabulary): (features, concept dim, hidden units) -> module.
HEADS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "linear": lambda in_dim, concept_dim, hidden_dim: nn.Linear(in_dim, concept_dim),
    "mlp": lambda in_dim, concept_dim, hidden_dim: nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, concept_dim)
    ),
}


class ConceptAlignmentHead(nn.Module):
    """Projects features into the concept dimension and L2-normalises them.

    ``kind="linear"`` is one linear layer; ``kind="mlp"`` is
    linear -> GELU -> linear with ``hidden_dim`` units.
    """

    def __init__(self, in_dim: int, concept_dim: int, kind: str = DEFAULT_HEAD, hidden_dim: int = 512) -> None:
        super().__init__()
        check_choice("head", kind, HEADS)
        self.proj: nn.Module = HEADS[kind](in_dim, concept_dim, hidden_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(features).float(), dim=-1)  # unit vectors in float32, under autocast too
