"""CVM as an Avalanche strategy, for users who run Avalanche's own loop."""

from __future__ import annotations

from typing import Any

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from cvm_lightning.model import CVMModule


class CVMStrategy(SupervisedTemplate):
    """Continual Visual Mapping inside Avalanche's ``SupervisedTemplate`` loop.

    The model is a :class:`CVMModule`; its output is the similarity logits
    over class concepts (indexed by class id, unseen classes at -inf), so
    Avalanche's ``EvaluationPlugin`` metrics work unchanged. Training uses the
    module's alignment loss and its class-balanced replay memory (samples are
    stored during the first epoch of each experience; replayed samples are
    appended to every minibatch), and the optimiser state is reset at each
    experience, exactly as the Lightning path does. With ``ema``, each step
    trains the raw weights and the model evaluates with their average.

    Args are those of ``SupervisedTemplate``; ``optimizer`` defaults to the
    module's configured optimiser.
    """

    def __init__(self, *, model: CVMModule, optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("criterion", nn.CrossEntropyLoss())
        super().__init__(model=model, optimizer=optimizer or model.build_optimizer(), **kwargs)
        self._loss: torch.Tensor | None = None

    def _before_training_exp(self, **kwargs: Any) -> None:
        self.model.start_experience(
            sorted(self.experience.classes_in_this_experience), self.experience.current_experience
        )
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs: Any) -> None:
        self.model.end_experience(self.dataloader)
        super()._after_training_exp(**kwargs)

    def _before_forward(self, **kwargs: Any) -> None:
        self.model.hold_training_weights()  # with ema, the step trains the raw weights, as in the Lightning path
        super()._before_forward(**kwargs)

    def _after_update(self, **kwargs: Any) -> None:
        self.model.hold_averaged_weights()
        super()._after_update(**kwargs)

    def make_optimizer(self, **kwargs: Any) -> None:
        # Avalanche keeps Adam moments across experiences by default; the
        # Lightning path starts each experience fresh, and so do we.
        super().make_optimizer(**{**kwargs, "reset_optimizer_state": True})

    def forward(self) -> torch.Tensor:
        if not self.is_training:
            return self.model(self.mb_x)
        # The module's own training loss (replay included); the output is the
        # logits of this minibatch, as Avalanche's metrics expect.
        self._loss, z = self.model.training_loss(self.mb_x, self.mb_y, offer=self.clock.train_exp_epochs == 0)
        return self.model.logits(z[: len(self.mb_x)])

    def criterion(self) -> torch.Tensor:
        return self._loss if self.is_training else super().criterion()
