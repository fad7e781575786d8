"""Re-estimating BatchNorm statistics after training on an experience."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from cvm_lightning.model.augment import BatchAugment


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: Iterable[torch.Tensor], forward: Callable | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance over ``images``.

    A backbone trained from scratch for a few dozen steps moves faster than
    its running statistics (momentum 0.1) follow, so in eval mode it can fall
    to chance although it is accurate in train mode. One pass with cumulative
    averaging over the experience's data fixes the statistics without
    changing any weight. Training augmentation is off during the pass.
    Frozen layers (no trainable parameter) are left as they are. Returns the
    number of BatchNorm layers reset.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
             and any(p.requires_grad for p in m.parameters())]  # a frozen layer keeps its (pretrained) statistics
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    for m in model.modules():
        if isinstance(m, BatchAugment):
            m.eval()  # statistics of the images the model will be tested on
    try:
        for x in images:
            (forward or model)(x)
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def recalibrate_on_batches(model: nn.Module, batches: Iterable, device: torch.device | str) -> int:
    """:func:`recalibrate_batchnorm` over ``(x, y, ...)`` batches, as training saw them.

    A model with ``mix_replay`` (a :class:`CVMModule`) gets its replayed
    samples mixed in, and is run through its ``embed`` method.
    """

    def images():
        for batch in batches:
            x, y = batch[0], batch[1]
            if hasattr(model, "mix_replay"):
                x, _, _ = model.mix_replay(x, y)
            yield x.to(device)

    return recalibrate_batchnorm(model, images(), forward=getattr(model, "embed", None))
