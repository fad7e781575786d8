"""Notice a baseline whose training loss stops being a number.

Avalanche's loop trains on through NaN and infinite losses and evaluates
the diverged model like any other: it predicts one class everywhere, an
accuracy of 1/classes that reads like a weak strategy. The plugin keeps the
first training step with a non-finite loss so the report can say which it
is, and the comparison's other strategies still run. (CVM stops at such a
loss with an error that names the fix: see ``CVMModule``.)
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin


class NonFiniteLossPlugin(SupervisedPlugin):
    """Counts training steps; ``first`` is the first (1-based) whose loss was NaN or infinite, ``None`` if none."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.first: int | None = None

    def before_backward(self, strategy, **kwargs) -> None:
        self.steps += 1
        if self.first is None and not bool(torch.isfinite(strategy.loss.detach()).all()):
            self.first = self.steps
