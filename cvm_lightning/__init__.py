"""Continual Visual Mapping (CVM) for PyTorch Lightning.

Map images into a fixed knowledge space of language-model concept
embeddings, and learn from a stream of experiences without a drifting
classifier head.
"""

from cvm_lightning.concepts import ConceptBank, TextModelSpec
from cvm_lightning.model import CVMModule, ReplayBuffer

__version__ = "0.1.0"
__all__ = ["CVMModule", "ConceptBank", "ReplayBuffer", "TextModelSpec", "__version__"]
