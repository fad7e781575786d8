"""Feeds Avalanche's evaluation loop into an :class:`AccuracyMatrix`."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

from cvm_lightning.metrics.continual import AccuracyMatrix


class AccuracyMatrixPlugin(SupervisedPlugin):
    """Records ``R[i, j]`` while any Avalanche strategy evaluates a test stream.

    ``i`` is the index of the last training experience (evaluations before
    any training are ignored), ``j`` the evaluated experience; the
    prediction is the argmax of the model output, as in Avalanche's metrics.
    """

    def __init__(self, n_experiences: int) -> None:
        super().__init__()
        self.matrix = AccuracyMatrix(n_experiences)
        self._trained = -1

    def after_training_exp(self, strategy, *args, **kwargs) -> None:
        self._trained = strategy.experience.current_experience

    def before_eval_exp(self, strategy, *args, **kwargs) -> None:
        if self._trained >= 0 and strategy.experience.current_experience == 0:
            self.matrix.reset_row(self._trained)

    def after_eval_iteration(self, strategy, *args, **kwargs) -> None:
        if self._trained >= 0:
            self.matrix.update(
                strategy.mb_output.detach().cpu(),
                strategy.mb_y.cpu(),
                self._trained,
                strategy.experience.current_experience,
            )
