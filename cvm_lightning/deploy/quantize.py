"""int8 ONNX: static quantisation with onnxruntime, calibrated on the model's own replay memory.

The replay memory is a class-balanced sample of the training images that the
checkpoint already carries, so calibration needs no data beyond the
checkpoint. Weights become int8 per output channel and activations uint8
(QDQ format, which onnxruntime fuses into integer kernels); the pixel
normalisation and the final similarities to the concepts stay in float32.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from cvm_lightning.errors import ConfigError

# Enough images for stable activation ranges at a few seconds of calibration on a small CPU.
CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 32
# What is quantised: convolutions and the head's matrix products. The similarity to the concepts is one
# small matrix product whose rounding would move every prediction's score, so it stays float32.
QUANTIZED_OPS = ("Conv", "Gemm")


def calibration_images(module, image_size: int, limit: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """Up to ``limit`` images of the module's replay memory (class-balanced), in [0, 1], resized to ``image_size``."""
    per_class = [module.replay.samples_of(c) for c in module.replay.classes]
    if not per_class:
        raise ConfigError(
            "--quantize int8 calibrates on the checkpoint's replay memory, and this one is empty (trained with "
            "--buffer 0). Train with a memory (--buffer N), or export without --quantize."
        )
    take = max(1, limit // len(per_class))
    images = torch.cat([samples[:take] for samples in per_class])[:limit]
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
    return images.clamp(0, 1)


def quantize_int8(fp32_onnx: Path, out: Path, images: torch.Tensor, meta: dict, reduce_range: bool = True) -> None:
    """Write the int8 version of ``fp32_onnx`` at ``out``, calibrated on ``images``, with ``meta`` in its metadata.

    ``reduce_range`` keeps the weights to 7 bits. On x86 CPUs without VNNI,
    onnxruntime's u8 x s8 kernels add pairs of products in 16 bits, which
    8-bit weights can saturate; 7-bit ones cannot, so the file computes the
    same on every CPU it is taken to (onnxruntime's own advice for such CPUs).
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise ConfigError(f"int8 export needs {err.name}: pip install 'cvm_lightning[onnx]'.") from err

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(images.split(CALIBRATION_BATCH))

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"images": batch.numpy()}

    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
    model = onnx.load(str(out))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "cvm_meta.json", json.dumps({**meta, "quantized": "int8"})
    onnx.save(model, str(out))
