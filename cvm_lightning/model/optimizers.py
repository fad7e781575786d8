"""The optimisers of every strategy, CVM's and the baselines', keyed by the ``optimizer`` setting."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], float, float, float], torch.optim.Optimizer]

# Each takes (parameters, lr, weight_decay, momentum); momentum is SGD's, the Adam family keeps its own betas.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adamw": lambda params, lr, weight_decay, momentum: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    "adam": lambda params, lr, weight_decay, momentum: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
    "sgd": lambda params, lr, weight_decay, momentum: torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum
    ),
}


def create_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], *, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """The optimiser ``name`` (``adamw``, ``adam`` or ``sgd``) over ``params``."""
    return OPTIMIZERS[name](params, lr, weight_decay, momentum)
