"""Generalised zero-shot: classes known by name compete with the classes trained on images.

A model trained on some classes scores them higher than classes it knows
only by name, whatever the image: among all classes, the named ones are
rarely predicted. Calibrated stacking (Chao et al., 2016) subtracts a
margin from the trained ("seen") classes' scores. Here the margin is chosen
on held-out images of the seen classes alone, since images of the named
classes are what a user does not have: it is the ``quantile`` of how far
each held-out image's best seen score lies above its best named score, so
that about that share of held-out seen images would go to a named class.
"""

from __future__ import annotations

import torch


def calibrated_stacking_margin(similarities: torch.Tensor, seen: torch.Tensor, quantile: float = 0.1) -> float:
    """The margin for seen classes' scores, from ``similarities`` (B x K) of held-out images of seen classes.

    ``seen`` is a boolean mask over the K classes; at least one class must
    be seen and one not.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}.")
    if bool(seen.all()) or not bool(seen.any()):
        raise ValueError("Calibrated stacking needs both seen classes and classes known by name only.")
    gap = similarities[:, seen].max(dim=1).values - similarities[:, ~seen].max(dim=1).values
    return float(torch.quantile(gap.double(), quantile))


def generalized_zero_shot(
    similarities: torch.Tensor, labels: torch.Tensor, seen: torch.Tensor, margin: float = 0.0
) -> dict[str, float]:
    """Accuracy on seen-class and on named-class images with every class competing, and their harmonic mean.

    ``margin`` is subtracted from the seen classes' scores first
    (:func:`calibrated_stacking_margin`; 0 is no calibration).
    """
    predictions = (similarities - margin * seen.to(similarities.dtype)).argmax(dim=1)
    of_seen = seen[labels]
    if bool(of_seen.all()) or not bool(of_seen.any()):
        raise ValueError("Generalised zero-shot needs test images of both seen and named classes.")
    seen_acc = float((predictions[of_seen] == labels[of_seen]).float().mean())
    unseen_acc = float((predictions[~of_seen] == labels[~of_seen]).float().mean())
    harmonic = 2 * seen_acc * unseen_acc / (seen_acc + unseen_acc) if seen_acc + unseen_acc else 0.0
    return {"seen": seen_acc, "unseen": unseen_acc, "harmonic": harmonic}
