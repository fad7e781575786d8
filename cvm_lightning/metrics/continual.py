"""torchmetrics ``Metric`` classes for continual learning.

All of them accumulate the same two states, correct and total counts per
(training experience, test experience) cell, summed across processes, so they
are exact under DDP and share one compute group in a ``MetricCollection``.
Each ``update`` takes predictions (class ids, or scores whose argmax is the
class) and targets for one test experience, evaluated after one training
experience.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from cvm_lightning.metrics import functional as F


class AccuracyMatrix(Metric):
    """``R[i, j]``: accuracy on test experience ``j`` after training experience ``i``.

    Cells never evaluated are NaN (whole rows when only every few
    experiences are evaluated). ``compute`` returns the T x T matrix;
    evaluating every test experience (``j > i`` too) after each training
    experience enables forward transfer.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, n_experiences: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if n_experiences < 1:
            raise ValueError(f"n_experiences must be >= 1, got {n_experiences}.")
        self.n_experiences = n_experiences
        shape = (n_experiences, n_experiences)
        self.add_state("correct", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, train_experience: int, test_experience: int) -> None:
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=-1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape.")
        for name, value in (("train_experience", train_experience), ("test_experience", test_experience)):
            if not 0 <= value < self.n_experiences:
                raise ValueError(f"{name}={value} outside 0..{self.n_experiences - 1}.")
        self.correct[train_experience, test_experience] += (preds == target).sum()
        self.total[train_experience, test_experience] += target.numel()

    def reset_row(self, train_experience: int) -> None:
        """Forget the counts of one row, so a repeated evaluation replaces it."""
        self.correct[train_experience] = 0
        self.total[train_experience] = 0

    def compute(self) -> torch.Tensor:
        return self._matrix()

    def _matrix(self) -> torch.Tensor:
        return torch.where(self.total > 0, self.correct / self.total.clamp_min(1), float("nan"))

    def _evaluated(self) -> torch.Tensor:
        """The square top-left part of ``R`` up to the last evaluated row.

        Rows never evaluated (a run that evaluates every few experiences) stay
        NaN; an evaluated row must cover every seen test experience.
        """
        R = self._matrix().double()
        evaluated = self.total.sum(dim=1) > 0
        rows = torch.nonzero(evaluated).flatten()
        if len(rows) == 0:
            raise ValueError("No accuracy was recorded yet: call update() first.")
        last = int(rows[-1]) + 1
        R = R[:last, :last]
        if torch.isnan(R.tril()[evaluated[:last]]).any():
            raise ValueError(
                "Some seen experiences were not evaluated after a training experience; "
                "each evaluation must cover every seen test experience."
            )
        return R


class AverageAccuracy(AccuracyMatrix):
    """Average accuracy over the experiences learned so far.

    ``incremental=False``: ``A_t = mean_{j<=t} R[t, j]`` after the last
    training experience ``t``. ``incremental=True``: the mean of ``A_i`` over
    all ``i <= t`` (average incremental accuracy).
    """

    def __init__(self, n_experiences: int, incremental: bool = False, **kwargs) -> None:
        super().__init__(n_experiences, **kwargs)
        self.incremental = incremental

    def compute(self) -> torch.Tensor:
        R = self._evaluated()
        value = F.average_incremental_accuracy(R) if self.incremental else F.average_accuracy(R)
        return value.float()


class Forgetting(AccuracyMatrix):
    """Average forgetting; see :func:`cvm_lightning.metrics.functional.forgetting`.

    ``mode="max"``: ``mean_{j<t} max_{j<=l<t} R[l, j] - R[t, j]``;
    ``mode="avalanche"``: ``mean_{j<t} R[j, j] - R[t, j]``.
    """

    higher_is_better = False

    def __init__(self, n_experiences: int, mode: str = "max", **kwargs) -> None:
        if mode not in F.FORGETTING_MODES:
            raise ValueError(f"Unknown forgetting mode {mode!r}; choose one of {', '.join(F.FORGETTING_MODES)}.")
        super().__init__(n_experiences, **kwargs)
        self.mode = mode

    def compute(self) -> torch.Tensor:
        return F.forgetting(self._evaluated(), mode=self.mode).float()


class BackwardTransfer(AccuracyMatrix):
    """BWT: ``mean_{j<t} R[t, j] - R[j, j]`` (negative means forgetting)."""

    def compute(self) -> torch.Tensor:
        return F.backward_transfer(self._evaluated()).float()


class ForwardTransfer(AccuracyMatrix):
    """FWT: ``mean_{1<=j<=t} R[j-1, j] - b_j`` against reference accuracies ``b``.

    ``reference`` holds one accuracy per test experience, for example of the
    model before any training (random initialisation).
    """

    def __init__(self, n_experiences: int, reference: torch.Tensor, **kwargs) -> None:
        super().__init__(n_experiences, **kwargs)
        reference = torch.as_tensor(reference, dtype=torch.float64)
        if reference.shape != (n_experiences,):
            raise ValueError(f"Expected {n_experiences} reference accuracies, got shape {tuple(reference.shape)}.")
        self.reference = reference

    def compute(self) -> torch.Tensor:
        R = self._evaluated()
        return F.forward_transfer(R, self.reference[: len(R)]).float()
