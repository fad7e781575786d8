"""Watching incoming data for concept drift: does it still land near the learned concepts?"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics import Metric

from cvm_lightning.metrics.drift_statistic import SIGNALS, drift_report, nearest_and_margin
from cvm_lightning.settings import DEFAULT_Z_THRESHOLD


class ConceptDriftMonitor(Metric):
    """Flags data that lands farther from the learned concepts than held-out data did.

    ``update(similarities)`` takes the cosine similarities of images to the
    learned concepts (B x K, as an exported model outputs). Two signals are
    tracked: the similarity to the nearest concept and the margin to the
    second nearest. ``set_reference()`` (after updating on held-out data at
    the end of training) stores their means and standard deviations; after
    that, ``compute()`` reports the current means and a z-score for each,
    ``(mean - reference_mean) / (reference_std / sqrt(n))``, and ``drifted``
    is true when either ``|z|`` exceeds ``z_threshold``. The test is
    two-sided: data that falls between or far from the concepts lowers the
    signals, while degenerate inputs (sensor noise, a blank frame) often
    collapse onto one concept and raise them; both differ from held-out data.

    What it detects: a batch whose similarity statistics differ from held-out
    data, such as a new kind of item, a camera fault, different lighting,
    noise or images from another domain. What it does not detect: inputs
    mapped to a wrong concept with the same confidence as real ones (a new
    item that looks like a known one), changes too small for the z-test to
    separate from noise in small batches, or label changes on the same
    images. It needs no labels.
    """

    full_state_update = False

    def __init__(self, z_threshold: float = DEFAULT_Z_THRESHOLD, **kwargs) -> None:
        super().__init__(**kwargs)
        self.z_threshold = z_threshold
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")
        for signal in SIGNALS:
            self.add_state(f"{signal}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{signal}_sumsq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.reference: dict[str, tuple[float, float]] | None = None

    def update(self, similarities: torch.Tensor) -> None:
        signals = nearest_and_margin(similarities.detach().cpu().double().numpy())
        values = {signal: torch.from_numpy(value) for signal, value in zip(SIGNALS, signals)}
        self.count += similarities.shape[0]
        for signal, value in values.items():
            setattr(self, f"{signal}_sum", getattr(self, f"{signal}_sum") + value.sum())
            setattr(self, f"{signal}_sumsq", getattr(self, f"{signal}_sumsq") + (value**2).sum())

    def _stats(self) -> dict[str, tuple[float, float]]:
        n = max(float(self.count), 1.0)
        out = {}
        for signal in SIGNALS:
            mean = float(getattr(self, f"{signal}_sum")) / n
            var = max(float(getattr(self, f"{signal}_sumsq")) / n - mean**2, 0.0)
            out[signal] = (mean, math.sqrt(var))
        return out

    def set_reference(self, reference: dict[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, float]]:
        """Store ``reference`` (``{signal: (mean, std)}``), or the statistics seen so far, then reset."""
        self.reference = reference or self._stats()
        self.reset()
        return self.reference

    def compute(self) -> dict[str, float | bool]:
        if self.reference is None:
            raise ValueError("No reference yet: update on held-out data and call set_reference() first.")
        means = {signal: mean for signal, (mean, _) in self._stats().items()}
        return drift_report(means, float(self.count), self.reference, self.z_threshold)


class ConceptDriftCallback(pl.Callback):
    """Takes the drift reference from validation, then watches ``trainer.predict``.

    Each validation run (held-out data, at the end of training) replaces the
    reference; each prediction batch is checked against it, and a warning is
    raised when it drifts. ``report`` holds the last prediction run's
    :meth:`ConceptDriftMonitor.compute`. Needs steps that return
    ``similarities`` (``CVMModule`` does).
    """

    def __init__(self, z_threshold: float = DEFAULT_Z_THRESHOLD) -> None:
        self.monitor = ConceptDriftMonitor(z_threshold)
        self._held_out = ConceptDriftMonitor()
        self.report: dict[str, float | bool] | None = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._held_out.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._held_out.update(outputs["similarities"].detach().cpu())

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and float(self._held_out.count) > 1:
            self.monitor.set_reference(self._held_out._stats())

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.monitor.reset()

    def on_predict_batch_end(self, trainer, pl_module, outputs: Any, batch, batch_idx, dataloader_idx=0) -> None:
        batch_monitor = ConceptDriftMonitor(self.monitor.z_threshold)
        batch_monitor.reference = self.monitor.reference
        batch_monitor.update(outputs["similarities"].detach().cpu())
        self.monitor.update(outputs["similarities"].detach().cpu())
        if self.monitor.reference is not None and batch_monitor.compute()["drifted"]:
            rank_zero_warn(f"Concept drift in prediction batch {batch_idx}: {batch_monitor.compute()}")

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor.reference is not None:
            self.report = self.monitor.compute()
