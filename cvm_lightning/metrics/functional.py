"""Continual-learning metrics computed from an accuracy matrix.

``R`` is a T x T tensor: ``R[i, j]`` is the accuracy on test experience ``j``
after training on experience ``i`` (rows in training order). Every function
returns a scalar tensor, except :func:`forgetting_per_experience`, one value per experience.

A cell that was not evaluated is NaN: a whole row when the run evaluated
only every few experiences (``eval_every``), the upper triangle when only
seen experiences were tested. Each metric uses the evaluated cells it
needs and averages over those; only the last row must be complete.
"""

from __future__ import annotations

import torch

FORGETTING_MODES = ("max", "avalanche")


def _square(R: torch.Tensor) -> torch.Tensor:
    R = torch.as_tensor(R, dtype=torch.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"Expected a non-empty square accuracy matrix, got shape {tuple(R.shape)}.")
    return R


def _mean(values: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """The mean of the finite ``values``; ``empty`` when none is."""
    finite = [v for v in values if torch.isfinite(v)]
    return torch.stack(finite).mean() if finite else empty


def average_accuracy(R: torch.Tensor) -> torch.Tensor:
    """Final average accuracy: ``A_T = (1/T) sum_j R[T-1, j]``."""
    R = _square(R)
    if torch.isnan(R[-1]).any():
        raise ValueError("The last row of the accuracy matrix has cells that were not evaluated; "
                         "the final average accuracy needs every test experience evaluated after the last one.")
    return R[-1].mean()


def average_incremental_accuracy(R: torch.Tensor) -> torch.Tensor:
    """Average of the average accuracy after each experience (Rebuffi et al., iCaRL).

    ``(1/T) sum_i (1/(i+1)) sum_{j<=i} R[i, j]``, over the evaluated rows.
    """
    R = _square(R)
    return _mean([R[i, : i + 1].mean() for i in range(len(R))], R.new_full((), float("nan")))


def forgetting(R: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """Average forgetting over all experiences but the last; 0 for a single experience.

    ``mode="max"`` (Chaudhry et al. 2018; FACIL, Mammoth):
    ``f_j = max_{j<=l<T-1} R[l, j] - R[T-1, j]``, the drop from the best
    accuracy the experience had after it was learned.
    ``mode="avalanche"``: ``f_j = R[j, j] - R[T-1, j]``, the drop from the
    accuracy right after training on it (Avalanche's ``StreamForgetting``).
    Both average ``f_j`` over ``j < T-1``. For one experience whose accuracy
    goes 0.90, 0.95, 0.70 they give 0.25 and 0.20. Rows not evaluated are
    left out of the maximum, and an experience with no evaluated row before
    the last is left out of the average: with ``eval_every > 1`` the maximum is
    taken over fewer rows, so forgetting tends to read lower.
    """
    R = _square(R)
    if len(R) == 1:
        return R.new_zeros(())
    return _mean(list(forgetting_per_experience(R, mode)[:-1]), R.new_zeros(()))


def forgetting_per_experience(R: torch.Tensor, mode: str = "max") -> torch.Tensor:
    """``f_j`` of :func:`forgetting` for every test experience ``j`` (in a domain-incremental stream, each
    condition); the last experience's is 0 (nothing came after it), and an experience with no evaluated
    row before the last is NaN."""
    if mode not in FORGETTING_MODES:
        raise ValueError(f"Unknown forgetting mode {mode!r}; choose one of {', '.join(FORGETTING_MODES)}.")
    R = _square(R)
    T = len(R)
    if mode == "avalanche":
        best = list(torch.diagonal(R)[: T - 1])
    else:
        best = [_nanmax(R[j : T - 1, j]) for j in range(T - 1)]
    return torch.stack([*(b - R[-1, j] for j, b in enumerate(best)), R.new_zeros(())])


def _nanmax(values: torch.Tensor) -> torch.Tensor:
    finite = values[torch.isfinite(values)]
    return finite.max() if len(finite) else values.new_full((), float("nan"))


def backward_transfer(R: torch.Tensor) -> torch.Tensor:
    """BWT (Lopez-Paz & Ranzato 2017): ``(1/(T-1)) sum_{j<T-1} R[T-1, j] - R[j, j]``.

    Negative values mean forgetting; 0 for a single experience.
    """
    R = _square(R)
    T = len(R)
    if T == 1:
        return R.new_zeros(())
    return _mean(list(R[-1, : T - 1] - torch.diagonal(R)[: T - 1]), R.new_zeros(()))


def forward_transfer(R: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """FWT (Lopez-Paz & Ranzato 2017): ``(1/(T-1)) sum_{j>=1} R[j-1, j] - b_j``.

    ``reference`` holds ``b_j``, the accuracy of a reference model on each test
    experience (usually the model before any training, at random init).
    """
    R = _square(R)
    reference = torch.as_tensor(reference, dtype=torch.float64)
    T = len(R)
    if reference.shape != (T,):
        raise ValueError(f"Expected {T} reference accuracies, got shape {tuple(reference.shape)}.")
    if T == 1:
        return R.new_zeros(())
    return _mean(list(torch.diagonal(R, offset=1) - reference[1:]), R.new_full((), float("nan")))


def summarize(R: torch.Tensor, reference: torch.Tensor | None = None, forgetting_mode: str = "max") -> dict[str, float]:
    """All scalar metrics of ``R`` as floats: ``avg_acc``, ``avg_inc_acc``, ``forgetting``, ``bwt`` (and ``fwt``)."""
    out = {
        "avg_acc": average_accuracy(R),
        "avg_inc_acc": average_incremental_accuracy(R),
        "forgetting": forgetting(R, mode=forgetting_mode),
        "bwt": backward_transfer(R),
    }
    if reference is not None:
        out["fwt"] = forward_transfer(R, torch.as_tensor(reference)[: len(R)])
    return {key: float(value) for key, value in out.items()}
