"""The concept-alignment head: visual features -> unit vectors in concept space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvm_lightning.errors import ConfigError
from cvm_lightning.settings import CHOICES

HEADS = CHOICES["head"]


class ConceptAlignmentHead(nn.Module):
    """Projects features into the concept dimension and L2-normalises them.

    ``kind="linear"`` is one linear layer; ``kind="mlp"`` is
    linear -> GELU -> linear with ``hidden_dim`` units.
    """

    def __init__(self, in_dim: int, concept_dim: int, kind: str = "mlp", hidden_dim: int = 512) -> None:
        super().__init__()
        if kind == "linear":
            self.proj: nn.Module = nn.Linear(in_dim, concept_dim)
        elif kind == "mlp":
            self.proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, concept_dim))
        else:
            raise ConfigError(f"Unknown head {kind!r}; choose one of {', '.join(HEADS)}.")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(features).float(), dim=-1)  # unit vectors in float32, under autocast too
