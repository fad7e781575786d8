"""Export a trained CVM model to one self-contained file (TorchScript or ONNX).

The file holds the backbone, the alignment head and the concept matrix of
the classes learned so far; its metadata (``cvm_meta.json`` for TorchScript,
``metadata_props`` for ONNX) holds the class names and the preprocessing.
Running it needs ``torch`` (TorchScript) or ``onnxruntime`` (ONNX) only:
neither this package, nor ``transformers``, nor the text model.

The exported graph maps images (B x C x H x W, float, scaled to [-1, 1]) to
cosine similarities (B x K) with the K learned concepts; the prediction is
the argmax, its similarity the max.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cvm_lightning.atomic import atomic_path
from cvm_lightning.errors import ConfigError
from cvm_lightning.model import CVMModule
from cvm_lightning.model.backbones import upsample_small

FORMATS = ("torchscript", "onnx")
META_FILE = "cvm_meta.json"


class DeployedCVM(nn.Module):
    """Backbone + head + learned concepts: images -> similarities over learned classes."""

    def __init__(self, module: CVMModule) -> None:
        super().__init__()
        self.backbone = module.backbone
        self.head = module.head
        self.input_size = int(module.hparams["input_size"] or 0)
        learned = module.seen.nonzero().flatten()
        self.register_buffer("concepts", module.concepts[learned].clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_size:
            images = upsample_small(images, self.input_size)
        return self.head(self.backbone(images)) @ self.concepts.T


def deployment_metadata(module: CVMModule, image_size: int) -> dict:
    """What a runtime needs besides the graph: class names and preprocessing."""
    learned = module.seen.nonzero().flatten().tolist()
    names = module.class_names
    return {
        "format_version": 1,
        "class_ids": learned,
        "class_names": [names[i] for i in learned],
        "in_chans": int(module.hparams["in_chans"]),
        "image_size": int(image_size),
        "mean": 0.5,
        "std": 0.5,
        "output": "cosine similarity to each learned class concept; prediction = argmax",
    }


def export_model(module: CVMModule, out: Path, fmt: str = "torchscript", image_size: int = 32) -> Path:
    """Write ``module`` as a self-contained TorchScript or ONNX file at ``out`` (atomically)."""
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if not bool(module.seen.any()):
        raise ConfigError("The model has learned no class yet: train it before exporting.")
    meta = deployment_metadata(module, image_size)
    deployed = DeployedCVM(module).eval()
    example = torch.zeros(2, meta["in_chans"], image_size, image_size)
    with torch.no_grad(), atomic_path(out, suffix=out.suffix) as tmp:
        if fmt == "torchscript":
            traced = torch.jit.trace(deployed, example)
            torch.jit.save(traced, str(tmp), _extra_files={META_FILE: json.dumps(meta)})
        else:
            _export_onnx(deployed, example, tmp, meta)
    return out


def _export_onnx(deployed: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError as err:
        raise ConfigError(f"ONNX export needs {err.name}: pip install 'cvm_lightning[onnx]'.") from err

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        deployed, (example,), input_names=["images"], output_names=["similarity"],
        dynamic_shapes={"images": {0: batch}}, dynamo=True, external_data=False, verbose=False,
    )
    model = program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = META_FILE, json.dumps(meta)
    onnx.save(model, str(path))
