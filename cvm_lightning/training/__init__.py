"""Training on streams: the Lightning schedule and resumable checkpoints, CVM in Avalanche's loop, the baselines."""

from cvm_lightning.training.avalanche_strategy import CVMStrategy
from cvm_lightning.training.baselines import (
    BASELINES,
    BaselineSettings,
    BatchNormRecalibrationPlugin,
    ClassifierNet,
    build_baseline,
)
from cvm_lightning.training.checkpoints import (
    AtomicCheckpointIO,
    RunState,
    experience_checkpoints,
    fit_resumable,
    fit_to_end,
    random_state_kept,
)
from cvm_lightning.training.divergence import NonFiniteLossPlugin
from cvm_lightning.training.schedule import ExperienceSchedule

__all__ = [
    "AtomicCheckpointIO",
    "BASELINES",
    "BatchNormRecalibrationPlugin",
    "BaselineSettings",
    "CVMStrategy",
    "ClassifierNet",
    "ExperienceSchedule",
    "NonFiniteLossPlugin",
    "RunState",
    "build_baseline",
    "experience_checkpoints",
    "fit_resumable",
    "fit_to_end",
    "random_state_kept",
]
