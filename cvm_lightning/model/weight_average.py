"""``WeightAverage``: an exponential moving average of the trained weights, the ones the model predicts with."""

from __future__ import annotations

from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn


class WeightAverage:
    """The weights of ``parts`` averaged over optimiser steps (``CVMModule(ema=...)``, :class:`WeightAveragePlugin`).

    An average of the weights over time is used at test time in online
    continual learning (Soutif-Cormerais et al., CoLLAs 2023) and as the
    stable teachers of CLS-ER. Here it *is* the model outside a training
    step: the module holds the average, and the raw weights that the
    optimiser trains wait in this object. :meth:`hold_training` swaps them
    in before a step; :meth:`hold_average` folds the step into the average
    (timm's :class:`~timm.utils.ModelEmaV3`) and swaps the average back. So
    validation, prediction, exports, the class prototypes, BatchNorm
    recalibration and the model an update starts from all see the average,
    with no callback to remember.

    The swap exchanges the tensors' storage, not their values, so it costs
    nothing however large the model; the optimiser's state stays with the
    raw weights it belongs to. The average starts as the running mean of
    the weights after each step and becomes exponential with ``decay`` once
    ``1 / (1 - decay)`` steps are averaged, so the weights at
    initialisation never linger in it.

    Lightning's ``EMAWeightAveraging`` callback keeps its average in a copy
    of the whole module, made afresh at each ``fit``: an update run in a new
    process (``cvm learn``) would start the average over, and it would copy
    back CVM's seen mask and concepts, whose shapes grow with each class.
    This one covers the modules it is given only (CVM's encoder and head),
    and the module's checkpoint keeps it (:meth:`state_dict`), so an update
    goes on from the same raw weights and the same count of steps. A tensor
    that grew since the last swap (a growing head's new units) keeps its
    average and raw values where they overlap and starts from the live
    values elsewhere. Integer buffers (a head's active units, BatchNorm's
    batch count) are not averaged, so they stay with the module, the one
    copy that adaptations update.
    """

    def __init__(self, *parts: nn.Module, decay: float) -> None:
        self.parts = nn.ModuleList(parts)
        self.ema = ModelEmaV3(self.parts, decay=decay, use_warmup=True, warmup_gamma=1.0, warmup_power=1.0)
        self.steps = 0  # optimiser steps averaged so far
        self.holds_average = True  # whether the module holds the average (and this object the raw weights)

    def _swap(self) -> None:
        ours = self.ema.module.state_dict(keep_vars=True)
        live = self.parts.state_dict(keep_vars=True)
        if ours.keys() != live.keys():
            raise RuntimeError("WeightAverage: the averaged modules gained or lost tensors; only their sizes may grow.")
        for a, b in zip(ours.values(), live.values()):
            if a.shape != b.shape:
                grown = b.detach().clone()
                overlap = tuple(slice(0, min(m, n)) for m, n in zip(a.shape, b.shape))
                grown[overlap] = a.data[overlap]
                a.data = grown
            if b.is_floating_point():
                a.data, b.data = b.data, a.data

    @torch.no_grad()
    def hold_training(self) -> None:
        """Before an optimiser step: the module takes the raw weights (a no-op when it holds them)."""
        if self.holds_average:
            device = next(self.parts.parameters()).device
            if next(self.ema.module.parameters()).device != device:  # loaded on the CPU, trained elsewhere
                self.ema.module.to(device)
            self._swap()
            self.holds_average = False

    @torch.no_grad()
    def hold_average(self, update: bool = True) -> None:
        """After a step: fold the raw weights into the average (with ``update``) and give the module the average."""
        if self.holds_average:
            return
        if update:
            self.steps += 1
            self.ema.update(self.parts, step=self.steps)  # this object holds the average now
        self._swap()
        self.holds_average = True

    def raw_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights the optimiser trains, keyed like ``ModuleList([encoder, head])``."""
        source = self.ema.module if self.holds_average else self.parts
        return {name: value.detach().clone() for name, value in source.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers only (checkpoints load with ``weights_only=True``)."""
        return {"raw": self.raw_state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the raw weights and the step count saved by :meth:`state_dict`; the module holds the average."""
        self.hold_average(update=False)
        self.ema.module.load_state_dict(state["raw"])
        self.steps = int(state["steps"])
