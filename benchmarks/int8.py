"""int8 edge export against float32: file size, batch-1 and batch-64 latency, accuracy, on a finished run.

    python benchmarks/int8.py --run OUT [--repeats 50] [--json out.json]

``OUT`` is a ``cvm run`` output folder: its ``final.ckpt`` is exported twice
(``cvm export --format onnx`` with and without ``--quantize int8``), and both
files are scored by onnxruntime on every test image of the run's own stream
(rebuilt from its ``run_config.json``). Latency is the median of
``--repeats`` calls after warm-up, in this one process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from _report import table, write_json

from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.deploy import export_model
from cvm_lightning.deploy.predict import load_checkpoint


def latency_ms(session: onnxruntime.InferenceSession, batch: np.ndarray, repeats: int) -> float:
    for _ in range(3):
        session.run(None, {"images": batch})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"images": batch})
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a `cvm run` output folder with final.ckpt")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    config = RunConfig.load(args.run / "run_config.json")
    module = load_checkpoint(args.run / "final.ckpt")
    data = ClassIncrementalDataModule(**config.data_settings())
    images, labels = [], []
    for experience in data.benchmark.test_stream:
        for x, y, *_ in torch.utils.data.DataLoader(experience.dataset.eval(), batch_size=512):
            images.append(x)
            labels.append(y)
    x, y = torch.cat(images).numpy().astype(np.float32), torch.cat(labels).numpy()
    learned = module.seen.nonzero().flatten().numpy()  # the exported graph's columns, in class-id order
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in ("none", "int8"):
            path = export_model(module, Path(tmp) / f"{quantize}.onnx", "onnx", quantize=quantize)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            predicted = np.concatenate([learned[session.run(None, {"images": x[i:i + 256]})[0].argmax(1)]
                                        for i in range(0, len(x), 256)])
            rows.append({
                "model": "float32" if quantize == "none" else "int8",
                "MB": f"{path.stat().st_size / 2**20:.2f}",
                "b1 ms": f"{latency_ms(session, x[:1], args.repeats):.3f}",
                "b64 ms/img": f"{latency_ms(session, x[:64], max(5, args.repeats // 5)):.3f}",
                "accuracy": f"{np.mean(predicted == y):.4f}",
            })
    print(f"{config.benchmark}, {config.backbone}, {len(y)} test images, threads {torch.get_num_threads()}")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"rows": rows, "run": str(args.run)})


if __name__ == "__main__":
    main()
