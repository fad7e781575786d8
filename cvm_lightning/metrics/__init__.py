"""Continual-learning metrics: functional forms, torchmetrics classes, a Lightning callback."""

from cvm_lightning.metrics import functional
from cvm_lightning.metrics.callback import ContinualMetricsCallback
from cvm_lightning.metrics.continual import (
    AccuracyMatrix,
    AverageAccuracy,
    BackwardTransfer,
    Forgetting,
    ForwardTransfer,
)
from cvm_lightning.metrics.drift import ConceptDriftCallback, ConceptDriftMonitor

__all__ = [
    "AccuracyMatrix",
    "AverageAccuracy",
    "BackwardTransfer",
    "ConceptDriftCallback",
    "ConceptDriftMonitor",
    "ContinualMetricsCallback",
    "Forgetting",
    "ForwardTransfer",
    "functional",
]
