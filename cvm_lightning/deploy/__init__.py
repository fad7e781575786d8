"""On-site operation: export to a self-contained file, predict on image files."""

from cvm_lightning._lazy import lazy_exports

__all__ = ["FORMATS", "DeployedCVM", "Predictor", "export_model", "image_files"]
# Lazy, so predicting with an ONNX file never imports torch (the exporter needs it).
__getattr__, __dir__ = lazy_exports(__name__, {
    "FORMATS": ".export", "DeployedCVM": ".export", "export_model": ".export",
    "Predictor": ".predict", "image_files": ".predict",
})
