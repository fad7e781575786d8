"""The knowledge space: concept embeddings from a frozen language model."""

from cvm_lightning._lazy import lazy_exports
from cvm_lightning.concepts.defaults import DEFAULT_TEMPLATES, DEFAULT_TEXT_MODEL

__all__ = [
    "DEFAULT_TEMPLATES",
    "DEFAULT_TEXT_MODEL",
    "ConceptBank",
    "EmbeddingCache",
    "TextModelSpec",
    "concept_sentences",
    "default_cache_dir",
    "load_text_encoder",
]
__getattr__, __dir__ = lazy_exports(__name__, {
    "ConceptBank": ".bank", "concept_sentences": ".bank", "EmbeddingCache": ".cache", "default_cache_dir": ".cache",
    "TextModelSpec": ".text_models", "load_text_encoder": ".text_models",
})
