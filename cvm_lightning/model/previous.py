"""``PreviousModel``: the model as it was before the current experience, for distillation and weight merging."""

from __future__ import annotations

import copy

import torch
from torch import nn


class PreviousModel:
    """A frozen copy of an encoder and head, taken when an experience starts.

    On site the model before an update is always at hand: it is the
    checkpoint the update starts from. It serves two settings of
    :class:`~cvm_lightning.model.CVMModule`: ``lwf``, distillation of its
    concept similarities (:func:`~cvm_lightning.model.losses.similarity_distillation`),
    and ``average_previous``, the weights after the experience merged with
    its own (:meth:`merge_into`). A frozen backbone is shared, not copied:
    its features are the same in both. ``seen`` is the mask of the classes
    the copy knew, the ones distillation covers.

    Lightning's ``WeightAveraging`` callbacks do not fit this merge: their
    average is made afresh at each ``fit``'s setup, so an update run in a
    new process (``cvm learn``) would start it over, and they copy every
    buffer back, CVM's seen mask and concepts included, whose shapes grow
    when a class is added. The model before an update is the checkpoint
    the update starts from, so nothing more needs keeping between updates.

    It is a plain object, not a submodule, so the module's parameters,
    ``state_dict`` and exports never include it; checkpoints saved inside an
    experience keep it apart (:meth:`state_dict`).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, seen: torch.Tensor) -> None:
        self.shares_encoder = bool(getattr(encoder, "frozen", False))
        self.encoder = encoder if self.shares_encoder else copy.deepcopy(encoder)
        self.head = copy.deepcopy(head)
        self.seen = seen.detach().clone()
        for part in (self.encoder, self.head):
            part.requires_grad_(False)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit embeddings of ``x`` as the previous model gave them (eval mode: its own BatchNorm statistics)."""
        modes = [(m, m.training) for m in (self.encoder, self.head)]
        for m, _ in modes:
            m.eval()
        try:
            return self.head(self.encoder(x)).float()
        finally:
            for m, mode in modes:
                m.train(mode)

    @torch.no_grad()
    def merge_into(self, encoder: nn.Module, head: nn.Module, weight: float) -> int:
        """Set each trained parameter to ``weight * previous + (1 - weight) * current``; returns how many.

        Parameters only: the BatchNorm statistics of the merged weights are
        re-estimated afterwards (``recalibrate_bn``), and a frozen backbone
        is the same in both.
        """
        merged = 0
        for old_part, new_part in ((self.encoder, encoder), (self.head, head)):
            if old_part is new_part:  # a shared frozen backbone
                continue
            for old, new in zip(old_part.parameters(), new_part.parameters()):
                if new.requires_grad:
                    new.lerp_(old.to(new), weight)  # new + weight * (old - new)
                    merged += 1
        return merged

    def state_dict(self) -> dict[str, dict | torch.Tensor]:
        """Tensors only (checkpoints load with ``weights_only=True``)."""
        encoder = {} if self.shares_encoder else self.encoder.state_dict()
        return {"encoder": encoder, "head": self.head.state_dict(), "seen": self.seen}

    @classmethod
    def from_state_dict(cls, state: dict, encoder: nn.Module, head: nn.Module) -> "PreviousModel":
        """The copy saved by :meth:`state_dict`, shaped like ``encoder`` and ``head``."""
        previous = cls(encoder, head, state["seen"])
        if not previous.shares_encoder:
            previous.encoder.load_state_dict(state["encoder"])
        previous.head.load_state_dict(state["head"])
        return previous
