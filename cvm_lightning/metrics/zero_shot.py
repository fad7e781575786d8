"""Zero-shot accuracy and forward transfer: each experience scored before it is trained.

Before training experience ``j``, its test images are scored

- among its own classes (``own[j]``), and
- among every class not seen yet, its own and later ones (``unseen[j]``).

``reference[j]`` is ``unseen[j]`` for the untrained model (measured once,
before the first experience). Forward transfer follows Lopez-Paz & Ranzato
(2017): ``FWT = mean_{j >= 1} (unseen[j] - reference[j])``, what earlier
experiences gave the next one before it was trained. CVM scores unseen
classes by their concepts, so a class known only by name can be recognised;
a classifier head's outputs for unseen classes are untrained, and these
numbers show it.

:class:`ZeroShotCallback` measures it for a Lightning module (``CVMModule``
scores with ``similarities``, any other module with its output) and
:class:`ZeroShotPlugin` for an Avalanche strategy, with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

Scorer = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def restricted_accuracies(score: Scorer, dataset, class_sets: Sequence[Sequence[int]],
                          device: torch.device | str = "cpu", batch_size: int = 256) -> list[float]:
    """For each set of ``class_sets``, the accuracy of ``argmax`` over those columns of ``score(x)``, in one pass
    (NaN for an empty set)."""
    columns = [torch.tensor(sorted(classes), device=device, dtype=torch.long) for classes in class_sets]
    correct, total = [0] * len(columns), 0
    # A generator of its own: scoring never draws from the global one that training uses.
    for batch in DataLoader(dataset, batch_size=batch_size, generator=torch.Generator()):
        x, y = batch[0].to(device), batch[1].to(device)
        scores = score(x)
        for k, cols in enumerate(columns):
            if len(cols):
                correct[k] += int((cols[scores[:, cols].argmax(dim=1)] == y).sum())
        total += len(y)
    return [c / total if total and len(cols) else math.nan for c, cols in zip(correct, columns)]


def restricted_accuracy(score: Scorer, dataset, classes: Sequence[int], device: torch.device | str = "cpu",
                        batch_size: int = 256) -> float:
    """Accuracy of ``argmax`` over the columns ``classes`` of ``score(x)`` on ``(x, y, ...)`` samples of ``dataset``."""
    return restricted_accuracies(score, dataset, [classes], device, batch_size)[0]


class ZeroShotRecorder:
    """The ``own``, ``unseen`` and ``reference`` rows of a stream and their summary."""

    def __init__(self, test_datasets: Sequence, classes: Sequence[Sequence[int]]) -> None:
        self.test_datasets = list(test_datasets)
        self.classes = [sorted(int(c) for c in cs) for cs in classes]
        n = len(self.classes)
        self.own = [math.nan] * n
        self.unseen = [math.nan] * n
        self.reference = [math.nan] * n

    def unseen_before(self, experience: int) -> list[int]:
        """The classes not seen before ``experience``: of its own and every later one, those no earlier one had.

        Empty in a domain-incremental stream after the first experience (every
        experience has every class): the zero-shot rows are then NaN.
        """
        seen = {c for cs in self.classes[:experience] for c in cs}
        return sorted({c for cs in self.classes[experience:] for c in cs} - seen)

    def measure_reference(self, score: Scorer, device) -> None:
        """``reference[j]`` for every experience, with the model as it is now (untrained)."""
        for j, dataset in enumerate(self.test_datasets):
            self.reference[j] = restricted_accuracy(score, dataset, self.unseen_before(j), device)

    def measure(self, experience: int, score: Scorer, device) -> None:
        """``own`` and ``unseen`` of ``experience``, before it is trained."""
        self.own[experience], self.unseen[experience] = restricted_accuracies(
            score, self.test_datasets[experience], [self.classes[experience], self.unseen_before(experience)], device
        )

    def summary(self) -> dict[str, Any]:
        """Rows and their means over experiences 1.. (experience 0 is before any training)."""
        later = range(1, len(self.classes))
        new = [j for j in later if self.unseen_before(j)]  # experiences that bring classes not seen before
        mean = lambda values: sum(values) / len(values) if values else math.nan  # noqa: E731
        return {
            "zero_shot_accuracy": mean([self.unseen[j] for j in new]),
            "zero_shot_own_accuracy": mean([self.own[j] for j in later]),
            "zero_shot_chance": mean([1 / len(self.unseen_before(j)) for j in new]),
            "fwt": mean([self.unseen[j] - self.reference[j] for j in new]),
            "zero_shot": {"own": list(self.own), "unseen": list(self.unseen), "reference": list(self.reference)},
        }

    def state_dict(self) -> dict[str, list[float]]:
        return {"own": list(self.own), "unseen": list(self.unseen), "reference": list(self.reference)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.own, self.unseen, self.reference = list(state["own"]), list(state["unseen"]), list(state["reference"])


def _scorer(model: torch.nn.Module) -> Scorer:
    # Concept similarities where the model has them (every concept, seen or not), else its outputs.
    return getattr(model, "similarities", model)


def in_eval_mode(model: torch.nn.Module, run: Callable[[], None]) -> None:
    """Call ``run()`` with ``model`` in eval mode, then put the model back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        run()
    finally:
        model.train(was_training)


class ZeroShotCallback(pl.Callback):
    """Measures zero-shot accuracy and FWT during one ``fit`` over a ``ClassIncrementalDataModule``.

    The untrained model is scored at the start of the fit, and each later
    experience at the start of its first epoch. :attr:`recorder` holds the
    numbers; they are saved in checkpoints, so a resumed fit keeps them.
    """

    def __init__(self) -> None:
        self.recorder: ZeroShotRecorder | None = None
        self._saved: dict | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage == "fit" and self.recorder is None:
            self.recorder = ZeroShotRecorder([e.dataset.eval() for e in dm.benchmark.test_stream],
                                             [dm.classes_of(j) for j in range(dm.n_experiences)])

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict() if self.recorder is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved:
            self.recorder.load_state_dict(self._saved)
        elif math.isnan(self.recorder.reference[0]):
            in_eval_mode(pl_module, lambda: self.recorder.measure_reference(_scorer(pl_module), pl_module.device))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if trainer.current_epoch % dm.epochs_per_experience:
            return
        experience = dm.experience_at(trainer.current_epoch)
        in_eval_mode(pl_module, lambda: self.recorder.measure(experience, _scorer(pl_module), pl_module.device))


class ZeroShotPlugin(SupervisedPlugin):
    """The same measurements for an Avalanche strategy on ``test_stream``."""

    def __init__(self, test_stream: Sequence) -> None:
        super().__init__()
        self.recorder = ZeroShotRecorder([e.dataset.eval() for e in test_stream],
                                         [e.classes_in_this_experience for e in test_stream])

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        model, j = strategy.model, strategy.experience.current_experience
        if j == 0:
            in_eval_mode(model, lambda: self.recorder.measure_reference(_scorer(model), strategy.device))
        in_eval_mode(model, lambda: self.recorder.measure(j, _scorer(model), strategy.device))
