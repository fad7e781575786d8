"""Task-free evaluation: the accuracy matrix at a stream's hidden boundaries, and anytime accuracy.

In a task-free stream no strategy is told where one experience ends and the
next begins. The harness still knows, so it evaluates every test
experience when the last training samples of experience ``k`` have been
learned (row ``k`` of the accuracy matrix, as in a boundary-aware run).
Anytime accuracy is the accuracy on the test images of the classes seen so
far, measured every ``every`` training samples (Koh et al., *Online
Continual Learning on Class Incremental Blurry Task Configuration with
Anytime Inference*, ICLR 2022): it shows what the learner knows between
boundaries, where a boundary-aware table cannot look. Its summary is the
mean over the evaluations, the area under the anytime curve.

:class:`TaskFreeEvaluator` does the counting and scoring; the Lightning
callback and the Avalanche plugin below feed it from their own loops.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

import pytorch_lightning as pl
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

from cvm_lightning.metrics.callback import write_accuracy_matrix
from cvm_lightning.metrics.continual import AccuracyMatrix
from cvm_lightning.metrics.functional import summarize
from cvm_lightning.metrics.zero_shot import in_eval_mode


def seen_class_accuracy(preds: torch.Tensor, target: torch.Tensor, seen: Sequence[int]) -> float:
    """Accuracy over the samples whose class is in ``seen`` (NaN when there are none).

    ``preds`` are class ids, or scores whose argmax is the class.
    """
    if preds.ndim == target.ndim + 1:
        preds = preds.argmax(dim=-1)
    kept = torch.isin(target, torch.as_tensor(list(seen), dtype=target.dtype, device=target.device))
    return float((preds[kept] == target[kept]).float().mean()) if bool(kept.any()) else math.nan


class TaskFreeEvaluator:
    """Counts a task-free learner's training samples and scores it at the hidden boundaries and every ``every`` samples.

    ``test_datasets[j]`` is test experience ``j`` (``(x, y, ...)`` samples).
    Call :meth:`advance` after each training step (or mini-experience) with
    its labels, and with ``ended=k`` when that step was the last of
    experience ``k``. The model is scored in eval mode, by the argmax of its
    output (for CVM, the nearest seen concept).
    """

    def __init__(self, test_datasets: Sequence, every: int | None = None, batch_size: int = 256,
                 device: torch.device | str = "cpu") -> None:
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1 training samples, got {every}.")
        self.test_datasets, self.every, self.batch_size, self.device = list(test_datasets), every, batch_size, device
        self.matrix = AccuracyMatrix(len(self.test_datasets))
        self.samples = 0
        self.seconds = 0.0  # spent scoring: the caller's training time leaves it out
        self.seen: set[int] = set()
        self.anytime: list[tuple[int, float]] = []  # (training samples so far, accuracy on the seen classes)

    @classmethod
    def for_stream(cls, datamodule, device: torch.device | str = "cpu") -> "TaskFreeEvaluator":
        """The evaluator of a task-free ``ClassIncrementalDataModule``: its test experiences, ``anytime_every``."""
        h = datamodule.hparams
        return cls([exp.dataset.eval() for exp in datamodule.benchmark.test_stream], every=h.anytime_every,
                   batch_size=h.eval_batch_size, device=device)

    @torch.no_grad()
    def _predictions(self, model: torch.nn.Module, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        preds, targets = [], []
        # A generator of its own: scoring never draws from the global one that training uses.
        for batch in DataLoader(dataset, batch_size=self.batch_size, generator=torch.Generator()):
            preds.append(model(batch[0].to(self.device)).argmax(dim=-1).cpu())
            targets.append(batch[1])
        return torch.cat(preds), torch.cat(targets)

    def _scored(self, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        scored: list[tuple[torch.Tensor, torch.Tensor]] = []
        in_eval_mode(model, lambda: scored.extend(self._predictions(model, dataset) for dataset in self.test_datasets))
        return scored

    def advance(self, model: torch.nn.Module, labels: torch.Tensor, ended: int | None = None) -> None:
        """Count one training step of ``labels``; score the model where a boundary or an anytime point is reached."""
        before = self.samples
        self.samples += len(labels)
        self.seen.update(int(c) for c in torch.as_tensor(labels).unique().tolist())
        anytime = self.every is not None and self.samples // self.every > before // self.every
        if ended is None and not anytime:
            return
        start = time.perf_counter()
        scored = self._scored(model)
        if ended is not None:
            self.matrix.reset_row(ended)
            for j, (preds, target) in enumerate(scored):
                self.matrix.update(preds, target, ended, j)
        if anytime:
            preds, target = (torch.cat(parts) for parts in zip(*scored))
            self.anytime.append((self.samples, seen_class_accuracy(preds, target, sorted(self.seen))))
        self.seconds += time.perf_counter() - start

    def summary(self) -> dict:
        """The anytime points and their mean (NaN when none was measured)."""
        values = [accuracy for _, accuracy in self.anytime]
        return {"anytime": [[samples, round(acc, 6)] for samples, acc in self.anytime],
                "anytime_accuracy": round(sum(values) / len(values), 6) if values else math.nan}


class TaskFreeEvaluation(pl.Callback):
    """Scores a one-pass ``fit`` over a task-free data module at its hidden boundaries and anytime.

    At setup, for a task-free :class:`~cvm_lightning.data.ClassIncrementalDataModule`
    (``mini_experience_size``), it builds ``evaluator``
    (:meth:`TaskFreeEvaluator.for_stream`), learns from the data module
    where each experience ends (``experience_end_batches``; the model never
    hears of it) and turns Lightning's validation off, since the evaluator
    scores the model itself. After the pass it logs ``{prefix}avg_acc``,
    ``forgetting`` and ``anytime_acc`` and, when the Trainer has a logger,
    writes ``accuracy_matrix.json`` (with the anytime points) into its
    ``log_dir``. A boundary-aware data module leaves it idle, so it can sit
    beside :class:`~cvm_lightning.metrics.ContinualMetricsCallback` in every
    Trainer (``cvm fit`` has both).
    """

    def __init__(self, prefix: str = "cl/") -> None:
        self.prefix = prefix
        self.evaluator: TaskFreeEvaluator | None = None
        self.ends: dict[int, int] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or not getattr(datamodule, "task_free", False):
            return
        self.evaluator = TaskFreeEvaluator.for_stream(datamodule, device=pl_module.device)
        self.ends = {end - 1: k for k, end in enumerate(datamodule.experience_end_batches)}  # batch -> experience
        trainer.limit_val_batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self.evaluator is not None:
            self.evaluator.advance(pl_module, batch[1], ended=self.ends.get(batch_idx))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.evaluator is None:
            return
        R = self.evaluator.matrix.compute().cpu()
        anytime = self.evaluator.summary()
        summary = {**summarize(R), "anytime_acc": anytime["anytime_accuracy"]}
        for key, value in summary.items():
            pl_module.log(self.prefix + key, value, sync_dist=False)
        if trainer.logger is not None:
            write_accuracy_matrix(Path(trainer.log_dir), R, {**summary, "anytime": anytime["anytime"]})


class TaskFreeEvaluationPlugin(SupervisedPlugin):
    """Feeds Avalanche's training on mini-experiences (``split_online_stream``) into a :class:`TaskFreeEvaluator`.

    ``experience_sizes[k]`` is the number of training samples of experience
    ``k``; mini-experiences never straddle two experiences, so the harness
    knows where each ends by counting, while the strategy's mini-experiences
    keep their boundary attributes masked.
    """

    def __init__(self, evaluator: TaskFreeEvaluator, experience_sizes: Sequence[int]) -> None:
        super().__init__()
        self.evaluator = evaluator
        self.ends = {end: k for k, end in enumerate(accumulate(experience_sizes))}  # samples so far -> experience

    def after_training_exp(self, strategy, *args, **kwargs) -> None:
        labels = torch.as_tensor(list(strategy.experience.dataset.targets))
        self.evaluator.advance(strategy.model, labels, ended=self.ends.get(self.evaluator.samples + len(labels)))
