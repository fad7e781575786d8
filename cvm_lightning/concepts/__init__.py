"""The knowledge space: concept embeddings from a frozen language model."""

from cvm_lightning.concepts.bank import DEFAULT_TEMPLATES, ConceptBank, concept_sentences
from cvm_lightning.concepts.cache import EmbeddingCache, default_cache_dir
from cvm_lightning.concepts.text_models import DEFAULT_TEXT_MODEL, TextModelSpec, load_text_encoder

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
