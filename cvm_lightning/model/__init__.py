"""The visual side: backbones, alignment head, losses, replay and the LightningModule.

Names load on first use, so importing one submodule (``reduced_resnet``,
which timm's first import registers) does not load Lightning.
"""

from cvm_lightning._lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, {
    "create_backbone": ".backbones", "feature_dim": ".backbones", "ConceptSpace": ".concept_space",
    "VisualEncoder": ".encoder", "ConceptAlignmentHead": ".heads", "LOSSES": ".losses", "CVMModule": ".module",
    "split_batch": ".module", "ReplayBuffer": ".replay",
})
