"""Training on streams: the Lightning adapter, CVM in Avalanche's loop, the baselines."""

from cvm_lightning.training.avalanche_strategy import CVMStrategy
from cvm_lightning.training.baselines import BASELINES, BaselineSettings, ClassifierNet, build_baseline
from cvm_lightning.training.lightning_stream import LightningStreamAdapter

__all__ = [
    "BASELINES",
    "BaselineSettings",
    "CVMStrategy",
    "ClassifierNet",
    "LightningStreamAdapter",
    "build_baseline",
]
