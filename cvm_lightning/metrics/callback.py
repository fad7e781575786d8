"""A Lightning callback that fills the accuracy matrix and logs CL metrics."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from cvm_lightning.metrics.continual import AccuracyMatrix
from cvm_lightning.metrics.functional import summarize


class ContinualMetricsCallback(pl.Callback):
    """Records ``R[i, j]`` from validation runs and logs the CL metrics.

    Pass the test experiences as the validation dataloaders, in order
    (``val_dataloaders=[test_exp_0, test_exp_1, ...]``); dataloader ``j`` is
    test experience ``j``. The training experience ``i`` is the module's
    ``current_experience`` attribute when it has one (``CVMModule`` does),
    otherwise the number of ``fit`` calls so far minus one. A validation run
    before any ``fit`` records the reference accuracies for forward transfer.
    ``n_experiences`` may be left out when the Trainer gets a data module
    that has it (:class:`~cvm_lightning.data.ClassIncrementalDataModule`).

    After each validation run it logs ``{prefix}avg_acc``, ``avg_inc_acc``,
    ``forgetting``, ``bwt`` (and ``fwt``) through the Trainer's loggers and,
    when the Trainer has a logger, writes ``accuracy_matrix.json`` into its ``log_dir``. Counts are
    summed across processes, so the numbers are exact under DDP.
    """

    def __init__(self, n_experiences: int | None = None, forgetting_mode: str = "max", prefix: str = "cl/") -> None:
        self._make_matrices(n_experiences)
        self.forgetting_mode = forgetting_mode
        self.prefix = prefix
        self.summary: dict[str, float] = {}
        self._fits = 0

    def _make_matrices(self, n_experiences: int | None) -> None:
        # None: the size comes from the Trainer's data module at setup.
        self.matrix = AccuracyMatrix(n_experiences) if n_experiences is not None else None
        self._reference = AccuracyMatrix(n_experiences) if n_experiences is not None else None

    @property
    def reference(self) -> torch.Tensor | None:
        """Accuracy per test experience measured before any training, if any."""
        if not bool((self._reference.total[0] > 0).all()):
            return None
        return self._reference.compute()[0]

    def _experience(self, pl_module: pl.LightningModule) -> int:
        current = getattr(pl_module, "current_experience", None)
        return int(current) if current is not None else self._fits - 1

    def state_dict(self) -> dict[str, Any]:
        """Counts so far, so a resumed stream keeps its earlier rows."""
        return {
            "correct": self.matrix.correct.cpu(),
            "total": self.matrix.total.cpu(),
            "reference_correct": self._reference.correct.cpu(),
            "reference_total": self._reference.total.cpu(),
            "fits": self._fits,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for metric, prefix in ((self.matrix, ""), (self._reference, "reference_")):
            if state_dict[prefix + "total"].shape != metric.total.shape:
                raise ValueError(
                    f"The saved accuracy matrix is {tuple(state_dict[prefix + 'total'].shape)}, "
                    f"this callback's is {tuple(metric.total.shape)}: it belongs to another stream."
                )
            metric.correct = state_dict[prefix + "correct"].to(metric.correct)
            metric.total = state_dict[prefix + "total"].to(metric.total)
        self._fits = int(state_dict["fits"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.matrix is None:
            n_experiences = getattr(trainer.datamodule, "n_experiences", None)
            if n_experiences is None:
                raise ValueError("ContinualMetricsCallback needs n_experiences, or a data module that has it.")
            self._make_matrices(int(n_experiences))
        self.matrix.to(pl_module.device)
        self._reference.to(pl_module.device)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fits += 1

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        experience = self._experience(pl_module)
        if experience >= 0:
            self.matrix.reset_row(experience)  # a re-evaluation replaces the row
        else:
            self._reference.reset_row(0)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        if isinstance(outputs, Mapping) and "preds" in outputs:
            preds, target = outputs["preds"], outputs["target"]
        else:
            with torch.no_grad():
                preds, target = pl_module(batch[0]), batch[1]
        experience = self._experience(pl_module)
        if experience >= 0:
            self.matrix.update(preds, target, experience, dataloader_idx)
        else:
            self._reference.update(preds, target, 0, dataloader_idx)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        experience = self._experience(pl_module)
        if trainer.sanity_checking or experience < 0:
            return
        R = self.matrix.compute().cpu()
        if torch.isnan(R[experience, : experience + 1]).any():
            return  # not every seen test experience was evaluated
        # Rows of experiences that were not evaluated (eval_every) stay NaN: the metrics skip them.
        seen = R[: experience + 1, : experience + 1]
        reference = self.reference
        self.summary = summarize(seen, None if reference is None else reference.cpu(), self.forgetting_mode)
        for key, value in self.summary.items():  # the progress bar shows the average accuracy so far
            pl_module.log(self.prefix + key, value, prog_bar=key == "avg_acc", sync_dist=False)
        # trainer.log_dir is a collective call under DDP: every process asks, rank 0 writes.
        log_dir = trainer.log_dir if trainer.logger is not None else None
        if log_dir is not None:  # no logger: nowhere the user asked for files
            self._write_matrix(Path(log_dir), R)

    def _write_matrix(self, log_dir: Path, R: torch.Tensor) -> None:
        write_accuracy_matrix(log_dir, R, self.summary)


@rank_zero_only
def write_accuracy_matrix(log_dir: Path, R: torch.Tensor, summary: Mapping[str, Any]) -> None:
    """``log_dir/accuracy_matrix.json``: the matrix (``null`` where not measured) beside its summary, on rank zero."""
    path = log_dir / "accuracy_matrix.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [[None if v != v else round(float(v), 6) for v in row] for row in R.tolist()]
    path.write_text(json.dumps({"accuracy_matrix": rows, **summary}, indent=2))
