"""The knowledge space: one fixed, L2-normalised embedding per class concept."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from cvm_lightning.concepts.cache import EmbeddingCache, concept_key
from cvm_lightning.concepts.defaults import DEFAULT_TEMPLATES
from cvm_lightning.concepts.fixed_targets import FIXED_TARGETS
from cvm_lightning.concepts.text_models import TextModelSpec, load_text_encoder, text_model_identity
from cvm_lightning.errors import ConceptError
from cvm_lightning.settings import check_class_names


def concept_sentences(name: str, templates: Sequence[str], description: str | None = None) -> list[str]:
    """The sentences whose averaged embedding is the concept of ``name``."""
    sentences = [template.format(name) for template in templates]
    if description:
        sentences.append(f"{name}: {description}")
    return sentences


class ConceptBank:
    """Class names and their concept embeddings, indexed by class id.

    Embeddings come from a frozen text model (see :class:`TextModelSpec`):
    each class's sentences (prompt templates, plus its description when
    given) are embedded, L2-normalised, averaged and normalised again. They
    are cached on disk, so building the same bank twice never loads the text
    model; the text model is released as soon as the embeddings exist.

    Example::

        bank = ConceptBank.from_names(["cat", "dog"])
        bank.embeddings.shape  # (2, 384)
        bank.extend(["horse"])  # encodes only "horse"
    """

    def __init__(
        self,
        class_names: Sequence[str],
        embeddings: torch.Tensor,
        *,
        text_model: TextModelSpec | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        descriptions: Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        class_names = check_class_names(class_names) if len(class_names) else []
        if embeddings.shape[0] != len(class_names):
            raise ConceptError(f"{len(class_names)} class names but {embeddings.shape[0]} embeddings.")
        self.class_names = list(class_names)
        self.embeddings = F.normalize(embeddings.float(), dim=-1)
        self.text_model = text_model or TextModelSpec()
        self.templates = tuple(templates)
        self.descriptions = dict(descriptions or {})
        self.cache_dir = cache_dir

    @classmethod
    def from_names(
        cls,
        class_names: Sequence[str],
        *,
        text_model: TextModelSpec | str | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        descriptions: Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
    ) -> "ConceptBank":
        """Embed ``class_names`` (class id = position) with the text model."""
        spec = TextModelSpec(name=text_model) if isinstance(text_model, str) else (text_model or TextModelSpec())
        bank = cls(
            [], torch.empty(0, 0), text_model=spec, templates=templates, descriptions=descriptions, cache_dir=cache_dir
        )
        bank.extend(class_names)
        return bank

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.class_names)

    def index(self, name: str) -> int:
        """The class id of ``name``."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ConceptError(
                f"No concept named {name!r}; known concepts: {', '.join(self.class_names[:20])}"
                f"{' ...' if len(self) > 20 else ''}. Add it with ConceptBank.extend([{name!r}])."
            ) from None

    def extend(self, new_names: Sequence[str], descriptions: Mapping[str, str] | None = None) -> list[int]:
        """Add concepts for ``new_names`` (new class ids at the end); returns their ids.

        Only concepts missing from the disk cache are encoded; existing
        concepts are never recomputed.
        """
        new_names = check_class_names(new_names, known=self.class_names, what="new class names")
        self.descriptions.update(descriptions or {})
        new = self._embed(new_names)
        self.embeddings = new if len(self) == 0 else torch.cat([self.embeddings, new])
        first = len(self.class_names)
        self.class_names.extend(new_names)
        return list(range(first, len(self.class_names)))

    def _embed(self, names: Sequence[str]) -> torch.Tensor:
        if self.text_model.name in FIXED_TARGETS:
            if len(self):
                raise ConceptError(f"--text-model {self.text_model.name} is a fixed target set for all classes at "
                                   "once; it cannot take new classes. Use a text model to add classes by name.")
            return FIXED_TARGETS[self.text_model.name](len(names))
        sentences = {name: concept_sentences(name, self.templates, self.descriptions.get(name)) for name in names}
        cache = EmbeddingCache(text_model_identity(self.text_model), self.cache_dir)
        cached = cache.load()
        missing = [name for name in names if concept_key(sentences[name]) not in cached]
        if missing:
            cached.update(self._encode(missing, sentences))
            cache.save(cached)
        return torch.stack([cached[concept_key(sentences[name])] for name in names])

    def _encode(self, names: Sequence[str], sentences: Mapping[str, list[str]]) -> dict[str, torch.Tensor]:
        flat = [text for name in names for text in sentences[name]]
        encoder = load_text_encoder(self.text_model)
        try:
            vectors = F.normalize(encoder.encode(flat), dim=-1)
        finally:
            # The language model is only needed here: free it before training.
            del encoder
            gc.collect()
        out, start = {}, 0
        for name in names:
            count = len(sentences[name])
            out[concept_key(sentences[name])] = F.normalize(vectors[start : start + count].mean(0), dim=-1)
            start += count
        return out
