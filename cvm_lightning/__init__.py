"""Continual Visual Mapping (CVM) for PyTorch Lightning.

Map images into a fixed knowledge space of language-model concept
embeddings, and learn from a stream of experiences without a drifting
classifier head.
"""

from cvm_lightning._lazy import import_after, lazy_exports

__version__ = "0.1.0"
__all__ = ["CVMModule", "ConceptBank", "ReplayBuffer", "TextModelSpec", "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "CVMModule": ".model", "ReplayBuffer": ".model", "ConceptBank": ".concepts", "TextModelSpec": ".concepts",
})
# The package's timm models (reduced_resnet18) are registered when timm is first imported.
import_after("timm", "cvm_lightning.model.reduced_resnet")
