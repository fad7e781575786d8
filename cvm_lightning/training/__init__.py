"""Training on streams: the Lightning adapter, CVM in Avalanche's loop, the baselines."""

from cvm_lightning.training.avalanche_strategy import CVMStrategy
from cvm_lightning.training.baselines import (
    BASELINES,
    BaselineSettings,
    BatchNormRecalibrationPlugin,
    ClassifierNet,
    build_baseline,
)
from cvm_lightning.training.lightning_stream import LightningStreamAdapter
from cvm_lightning.training.schedule import ExperienceSchedule

__all__ = [
    "BASELINES",
    "BatchNormRecalibrationPlugin",
    "BaselineSettings",
    "CVMStrategy",
    "ClassifierNet",
    "ExperienceSchedule",
    "LightningStreamAdapter",
    "build_baseline",
]
