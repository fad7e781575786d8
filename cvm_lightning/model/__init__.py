"""The visual side: backbones, alignment head, losses, replay and the LightningModule."""

from cvm_lightning.model import reduced_resnet as _reduced_resnet  # noqa: F401 - registers reduced_resnet18 with timm
from cvm_lightning.model.backbones import create_backbone, feature_dim
from cvm_lightning.model.concept_space import ConceptSpace
from cvm_lightning.model.encoder import VisualEncoder
from cvm_lightning.model.heads import ConceptAlignmentHead
from cvm_lightning.model.losses import LOSSES
from cvm_lightning.model.module import CVMModule, split_batch
from cvm_lightning.model.replay import ReplayBuffer

__all__ = [
    "LOSSES",
    "CVMModule",
    "ConceptAlignmentHead",
    "ConceptSpace",
    "ReplayBuffer",
    "VisualEncoder",
    "create_backbone",
    "feature_dim",
    "split_batch",
]
