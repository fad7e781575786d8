"""Fixed targets without language: the controls that separate "fixed targets" from "language targets".

``--text-model random`` gives each class a random unit vector. These give
the whole class set a fixed geometry instead, as the pre-allocated fixed
classifiers of Pernici et al. do:

- ``"etf"``: a simplex equiangular tight frame, every pair of classes at
  cosine ``-1 / (K - 1)``, the most spread-out set of ``K`` unit vectors;
- ``"orthogonal"``: one-hot-like, every pair at cosine 0.

Both are embedded in a 384-wide space (all-MiniLM-L6-v2's width) by a fixed
rotation. Centring the concepts (``center_concepts``, on by default) turns
orthogonal targets into an ETF, so compare ``orthogonal`` with
``--no-center-concepts``. A fixed set is made for all classes at once; it
cannot take classes added later.
"""

from __future__ import annotations

from typing import Callable

import torch

DIM = 384
SEED = 0


def _rotation(n: int, dim: int) -> torch.Tensor:
    """A fixed ``n x dim`` matrix with orthonormal rows: places ``R^n`` inside ``R^dim``."""
    q, _ = torch.linalg.qr(torch.randn(dim, n, generator=torch.Generator().manual_seed(SEED)))
    return q.T


def orthogonal(n: int, dim: int = DIM) -> torch.Tensor:
    """``n`` mutually orthogonal unit vectors (needs ``n <= dim``)."""
    return _rotation(n, max(dim, n))


def simplex_etf(n: int, dim: int = DIM) -> torch.Tensor:
    """``n`` unit vectors with pairwise cosine ``-1 / (n - 1)``: the centred one-hot vectors, normalised."""
    centred = torch.eye(n) - 1.0 / n
    return torch.nn.functional.normalize(centred, dim=-1) @ _rotation(n, max(dim, n))


FIXED_TARGETS: dict[str, Callable[[int], torch.Tensor]] = {"etf": simplex_etf, "orthogonal": orthogonal}
