"""Frozen-feature extraction: which path runs a pretrained backbone fastest on this CPU.

    python benchmarks/extraction.py [--backbone tf_efficientnet_lite0] [--input-size 160] [--rounds 3] [--json out.json]

``--freeze-backbone`` computes each image's features once (and keeps them on
disk), so the extraction is most of a frozen run's time. This measures
images/s of the frozen ``VisualEncoder`` (pretrained weights, eval mode,
batch 64 of 32x32 images upsampled to ``--input-size``) in this one
process, alternating the variants over ``--rounds`` rounds: eager float32,
eager with ``--channels-last``, eager under ``--precision bf16-mixed`` (on
CPUs with bfloat16 units), both, and the backbone exported to ONNX and run
by onnxruntime (when installed; its export time is reported apart).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _report import table, write_json

from cvm_lightning.hardware import native_bf16
from cvm_lightning.model.backbones import upsample_small
from cvm_lightning.model.cpu import autocast
from cvm_lightning.model.encoder import VisualEncoder


def images_per_second(run, batch: torch.Tensor) -> float:
    run(batch[:8])  # warm-up
    start = time.perf_counter()
    run(batch)
    return len(batch) / (time.perf_counter() - start)


def onnx_runner(encoder: VisualEncoder, batch: torch.Tensor, folder: Path):
    """The backbone as an onnxruntime session (pixels normalised and upsampled in torch, as the encoder does)."""
    import onnxruntime

    size = encoder.input_size
    path = folder / "backbone.onnx"
    start = time.perf_counter()
    torch.onnx.export(encoder.backbone, (torch.rand(2, encoder.in_chans, size, size),), str(path),
                      input_names=["x"], dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                      dynamo=True, external_data=False, verbose=False)
    seconds = time.perf_counter() - start
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor):
        pixels = upsample_small(encoder.normalize(x), size).numpy()
        return session.run(None, {"x": pixels})[0]

    return run, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    batch = torch.rand(64, 3, 32, 32)
    encoders = {cl: VisualEncoder(args.backbone, pretrained=True, input_size=args.input_size, channels_last=cl,
                                  freeze=True).eval() for cl in (False, True)}
    for encoder in encoders.values():
        encoder.features = None  # time the backbone itself, not the cache's lookups
    variants = {"eager fp32": (False, "32-true"), "eager fp32 + channels_last": (True, "32-true")}
    if native_bf16():
        variants.update(
            {"eager bf16-mixed": (False, "bf16-mixed"), "eager bf16-mixed + channels_last": (True, "bf16-mixed")}
        )

    def eager(channels_last: bool, precision: str):
        def run(x):
            with torch.no_grad(), autocast(precision):
                return encoders[channels_last](x)
        return run

    runners = {name: eager(*flags) for name, flags in variants.items()}
    export_seconds = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            runners["onnxruntime fp32"], export_seconds = onnx_runner(encoders[False], batch, Path(tmp))
        except ImportError:
            pass
        rates: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, run in runners.items():
                rates.setdefault(name, []).append(images_per_second(run, batch))
    base = statistics.median(rates["eager fp32"])
    rows = [
        {"path": name, "img/s": f"{statistics.median(v):.0f}", "x eager fp32": f"{statistics.median(v) / base:.2f}x"}
        for name, v in rates.items()
    ]
    print(f"{args.backbone} pretrained, frozen, {args.input_size}x{args.input_size}, batch 64, "
          f"threads {torch.get_num_threads()}, median of {args.rounds} rounds")
    print(table(rows, ["path", "img/s", "x eager fp32"]))
    if export_seconds is not None:
        print(f"ONNX export of the backbone: {export_seconds:.1f} s")
    write_json(args.json, {"rows": rows, "onnx_export_seconds": export_seconds})


if __name__ == "__main__":
    main()
