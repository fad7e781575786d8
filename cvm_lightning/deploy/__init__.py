"""On-site operation: export to a self-contained file, predict on image files."""

from cvm_lightning.deploy.export import FORMATS, DeployedCVM, export_model
from cvm_lightning.deploy.predict import Predictor, image_files

__all__ = ["FORMATS", "DeployedCVM", "Predictor", "export_model", "image_files"]
