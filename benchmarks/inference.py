"""Inference latency and model size: eager PyTorch vs exported TorchScript and ONNX.

    python benchmarks/inference.py [--backbones mobilenetv3_small_100 resnet18 efficientnet_b0] [--json out.json]

For each backbone at 32x32 (10 learned classes), per-image latency at batch
1 and batch 64 of the deployable model (backbone + head + concepts ->
similarities): eager ``DeployedCVM``, the TorchScript file ``cvm export``
writes, and the ONNX file run by onnxruntime (when installed). Medians of
repeated calls after warm-up; all in this one process.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from _report import median_seconds, table, write_json

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.deploy import export_model
from cvm_lightning.deploy.export import DeployedCVM
from cvm_lightning.model import CVMModule


def latency_ms(run, batch: torch.Tensor, repeats: int) -> float:
    for _ in range(3):
        run(batch)
    return 1000 * median_seconds(lambda: run(batch), repeats) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mobilenetv3_small_100", "resnet18", "efficientnet_b0"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    bank = ConceptBank.from_names([f"class {i}" for i in range(10)])
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            module = CVMModule(bank, backbone=backbone, input_size=32, buffer_size=0)
            module.start_experience(list(range(10)))
            module.eval()
            eager = DeployedCVM(module).eval()
            scripted = torch.jit.load(str(export_model(module, Path(tmp) / f"{backbone}.pt", "torchscript")))
            runners = {"eager": eager, "torchscript": scripted}
            if onnxruntime is not None:
                onnx_path = export_model(module, Path(tmp) / f"{backbone}.onnx", "onnx")
                session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                name = session.get_inputs()[0].name
                runners["onnx"] = lambda x, s=session, n=name: s.run(None, {n: x.numpy()})
            params = sum(p.numel() for p in module.backbone.parameters()) + sum(
                p.numel() for p in module.head.parameters()
            )
            row = {"backbone": backbone, "params": f"{params / 1e6:.2f}M", "MB (fp32)": f"{params * 4 / 2**20:.1f}"}
            with torch.inference_mode():
                for label, run in runners.items():
                    for batch in (1, 64):
                        x = torch.randn(batch, 3, 32, 32)
                        row[f"{label} b{batch} ms/img"] = f"{latency_ms(run, x, args.repeats):.2f}"
            rows.append(row)
    print(f"32x32 RGB, 10 classes, threads {torch.get_num_threads()}, median of {args.repeats} calls")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
