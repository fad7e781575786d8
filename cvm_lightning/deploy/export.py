"""Export a trained CVM model to one self-contained file (TorchScript or ONNX).

The file holds the backbone, the alignment head and the concept matrix of
the classes learned so far; its metadata (``cvm_meta.json`` for TorchScript,
``metadata_props`` for ONNX) holds the class names and the preprocessing.
Running it needs ``torch`` (TorchScript) or ``onnxruntime`` (ONNX) only:
neither this package, nor ``transformers``, nor the text model.

The exported graph maps images (B x C x H x W, float in [0, 1]) to cosine
similarities (B x K) with the K learned concepts; the prediction is the
argmax, its similarity the max. The pixel normalisation is inside the graph.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from cvm_lightning.atomic import atomic_path
from cvm_lightning.deploy.quantize import calibration_images, quantize_int8
from cvm_lightning.errors import ConfigError
from cvm_lightning.model import CVMModule
from cvm_lightning.model.backbones import upsample_small
from cvm_lightning.paths import check_free_space, check_output_file
from cvm_lightning.settings import CHOICES, META_FILE, MODEL_SUFFIXES, check_settings

FORMATS = CHOICES["format"]


class DeployedCVM(nn.Module):
    """The trained ``VisualEncoder`` (no augmentation) + head + learned concepts.

    It maps images in [0, 1] to their similarities over the learned classes.

    With ``image_size`` (an exported graph, whose images always have that
    side) the upsampling to the model's input size is decided here, so a
    trace records no shape test.
    """

    def __init__(self, module: CVMModule, image_size: int | None = None) -> None:
        super().__init__()
        self.normalize = module.encoder.normalize
        self.backbone = module.encoder.backbone
        self.head = module.head
        input_size = int(module.hparams["input_size"] or 0)
        self.input_size = input_size if image_size is None or image_size < input_size else 0
        learned = module.seen.nonzero().flatten()
        self.register_buffer("concepts", module.concepts[learned].clone())
        # Prototypes (cvm learn --method prototypes) join the graph; without them it is the plain similarity.
        self.prototypes = module.prototypes.select(learned) if module.prototypes.active else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.normalize(images)
        if self.input_size:
            images = upsample_small(images, self.input_size)
        features = self.backbone(images)
        if self.prototypes is not None:
            return self.prototypes.scores(features, self.head(features), self.concepts)
        return self.head(features) @ self.concepts.T


def trained_image_size(module: CVMModule) -> int:
    """The side of the images ``module`` was trained on (recorded at training), else its input size, else 32."""
    return int(module.image_size or module.hparams["input_size"] or 32)


def deployment_metadata(module: CVMModule, image_size: int | None = None) -> dict:
    """What a runtime needs besides the graph: class names and preprocessing (``image_size``: the trained one)."""
    image_size = image_size or trained_image_size(module)
    learned = module.seen.nonzero().flatten().tolist()
    names = module.class_names
    return {
        "format_version": 2,
        "class_ids": learned,
        "class_names": [names[i] for i in learned],
        "in_chans": int(module.hparams["in_chans"]),
        "image_size": int(image_size),
        # Scale pixels to [0, 1], then (x - mean) / std: the graph normalises the rest itself.
        "mean": 0.0,
        "std": 1.0,
        "output": "cosine similarity to each learned class concept; prediction = argmax",
    }


def export_model(
    module: CVMModule, out: Path, fmt: str = "torchscript", image_size: int | None = None, *,
    quantize: str = "none", overwrite: bool = False,
) -> Path:
    """Write ``module`` as a self-contained TorchScript or ONNX file at ``out`` (atomically).

    ``image_size`` is the side a runtime resizes images to (default: the size
    the model was trained on). ``quantize="int8"`` (ONNX only) writes an
    int8 model calibrated on the module's replay memory
    (:mod:`cvm_lightning.deploy.quantize`). An existing ``out`` is replaced
    only with ``overwrite``.
    """
    check_settings({"format": fmt, "quantize": quantize, "image_size": image_size})
    out = check_output_file(Path(out), overwrite=overwrite, suffixes=MODEL_SUFFIXES[fmt], what=f"{fmt} file")
    if not bool(module.seen.any()):
        raise ConfigError("The model has learned no class yet: train it before exporting.")
    meta = deployment_metadata(module, image_size)
    calibration = calibration_images(module, meta["image_size"]) if quantize == "int8" else None
    deployed = DeployedCVM(module, meta["image_size"]).eval()
    example = torch.zeros(2, meta["in_chans"], meta["image_size"], meta["image_size"])
    with torch.no_grad(), atomic_path(out, suffix=out.suffix) as tmp, warnings.catch_warnings():
        # torch marks TorchScript deprecated; it is still the one format that runs on torch alone.
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        if fmt == "torchscript":
            # Serialised in memory, then written by Python: torch's own file writer aborts the process on a full
            # disk, where Python's raises an error the command line reports.
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.trace(deployed, example), buffer, _extra_files={META_FILE: json.dumps(meta)})
            check_free_space(out.parent, buffer.getbuffer().nbytes)
            tmp.write_bytes(buffer.getvalue())
        elif calibration is None:
            _export_onnx(deployed, example, tmp, meta)
        else:
            fp32 = tmp.with_name(tmp.stem + "-fp32.onnx")
            try:
                _export_onnx(deployed, example, fp32, meta)
                quantize_int8(fp32, tmp, calibration, meta)
            finally:
                fp32.unlink(missing_ok=True)
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
