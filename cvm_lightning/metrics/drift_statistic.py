"""The drift statistic in NumPy alone: the signals of a batch of similarities and their z-scores.

:class:`~cvm_lightning.metrics.drift.ConceptDriftMonitor` (a torchmetrics
``Metric``) and ``cvm serve``'s sliding window both compute it here, so the
served statistic is the one ``cvm predict --monitor`` reports, and serving an
ONNX model never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

SIGNALS = ("nearest", "margin")
MIN_STD = 1e-6  # a reference that never varied still gives a finite z


def nearest_and_margin(similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image (row): the similarity to the nearest concept, and its margin over the second nearest.

    >>> nearest, margin = nearest_and_margin(np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.2]]))
    >>> nearest.round(2).tolist(), margin.round(2).tolist()
    ([0.9, 0.3], [0.4, 0.1])
    """
    similarities = np.asarray(similarities, dtype=np.float64)
    if similarities.shape[1] < 2:
        top = similarities.max(axis=1)
        return top, np.zeros_like(top)
    top2 = -np.partition(-similarities, 1, axis=1)[:, :2]
    return top2[:, 0], top2[:, 0] - top2[:, 1]


def signal_stats(values: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """``{signal: (mean, std)}`` of each signal's values (population std)."""
    return {signal: (float(np.mean(v)), float(np.std(v))) for signal, v in values.items()}


def drift_report(means: Mapping[str, float], count: float, reference: Mapping[str, tuple[float, float]],
                 z_threshold: float) -> dict[str, float | bool]:
    """Each signal's mean and z-score against ``reference``, and whether either ``|z|`` exceeds ``z_threshold``.

    ``z = (mean - reference_mean) / (reference_std / sqrt(count))``: the
    distance of ``count`` images' mean from the reference, in standard errors.

    >>> report = drift_report({"nearest": 0.5, "margin": 0.1}, 16, {"nearest": (0.6, 0.1), "margin": (0.1, 0.05)}, 3)
    >>> round(report["z_nearest"], 6), report["z_margin"], report["drifted"]
    (-4.0, 0.0, True)
    """
    report: dict[str, float | bool] = {}
    n = max(float(count), 1.0)
    for signal in SIGNALS:
        ref_mean, ref_std = reference[signal]
        report[signal] = means[signal]
        report[f"z_{signal}"] = (means[signal] - ref_mean) / (max(ref_std, MIN_STD) / math.sqrt(n))
    report["drifted"] = any(abs(report[f"z_{s}"]) > z_threshold for s in SIGNALS)
    return report
