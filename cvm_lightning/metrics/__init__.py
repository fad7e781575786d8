"""Continual-learning metrics: functional forms, torchmetrics classes, a Lightning callback."""

from cvm_lightning._lazy import lazy_exports

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
# Lazy, so the NumPy drift statistic (``metrics.drift_statistic``) loads without torch for `cvm serve`.
__getattr__, __dir__ = lazy_exports(__name__, {
    "functional": ".functional", "ContinualMetricsCallback": ".callback",
    **dict.fromkeys(["AccuracyMatrix", "AverageAccuracy", "BackwardTransfer", "Forgetting", "ForwardTransfer"],
                    ".continual"),
    "ConceptDriftCallback": ".drift", "ConceptDriftMonitor": ".drift",
})
