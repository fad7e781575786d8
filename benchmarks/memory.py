"""Peak memory while training, with the language model released (the default) vs held.

    python benchmarks/memory.py [--checkpoint RUN/final.ckpt] [--json out.json]

Each variant runs in a fresh process: build the concept bank from an empty
cache (this loads the bundled all-MiniLM-L6-v2), then train CVM on
split-digits for one experience while sampling the resident memory. In
"released", the bank frees the language model after encoding, as it always
does; in "held", the script keeps a reference to a loaded copy, as a design
that encodes on the fly would. Target: the released run's training peak does
not include the language model (held - released ~ the model's size).

With ``--checkpoint`` (a split-digits run's ``final.ckpt``) it also exports
the model as TorchScript and ONNX and measures the peak resident memory and
wall time of ``cvm predict`` on 64 digit images, in a fresh process for
each of the three files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from _report import table, write_json


def child(variant: str) -> dict:
    import gc

    import psutil
    import pytorch_lightning as pl
    import torch

    from cvm_lightning.app.resources import PeakRSS
    from cvm_lightning.app.runner import RunConfig, build_cvm_module
    from cvm_lightning.concepts import ConceptBank, TextModelSpec
    from cvm_lightning.concepts.text_models import load_text_encoder
    from cvm_lightning.data import ClassIncrementalDataModule
    from cvm_lightning.streams import StreamConfig, build_benchmark

    warnings.filterwarnings("ignore")
    rss = lambda: psutil.Process().memory_info().rss / 2**20  # noqa: E731
    start = rss()
    held = load_text_encoder(TextModelSpec()) if variant == "held" else None
    if held is not None:
        held.encode(["a photo of a cat."])  # its weights are memory-mapped: touch them, as real use would
    lm_mb = sum(p.numel() * p.element_size() for p in held.model.parameters()) / 2**20 if held else None
    with tempfile.TemporaryDirectory() as cache:
        ConceptBank.from_names(["warm-up"], cache_dir=cache)  # the LM is loaded and released here
    gc.collect()
    config = RunConfig(epochs_per_experience=1, progress=False)
    benchmark = build_benchmark(config.benchmark, StreamConfig(seed=0))
    module = build_cvm_module(config, benchmark)
    dm = ClassIncrementalDataModule.from_benchmark(benchmark, epochs_per_experience=1)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    before = rss()
    with PeakRSS() as peak:
        module.start_experience(dm.classes_of(0), experience=0)
        trainer.fit(module, dm.train_dataloader_of(0))
    return {"variant": variant, "start_mb": start, "before_training_mb": before, "training_peak_mb": peak.peak_mb,
            "lm_parameters_mb": lm_mb, "torch_threads": torch.get_num_threads()}


def predict_rows(checkpoint: Path, folder: Path) -> list[dict]:
    """Peak RSS and wall time of ``cvm predict`` with the checkpoint and its two exports, each in a fresh process."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    images = folder / "images"
    images.mkdir()
    for i, pixels in enumerate(load_digits().images[:64]):
        Image.fromarray((pixels * 255 / 16).astype(np.uint8)).save(images / f"{i:02d}.png")
    cvm = [sys.executable, "-m", "cvm_lightning"]
    models = {"checkpoint (.ckpt)": checkpoint}
    for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
        models[f"{fmt} ({suffix})"] = folder / f"model{suffix}"
        subprocess.run([*cvm, "export", "--checkpoint", str(checkpoint), "--format", fmt, "--out",
                        str(models[f"{fmt} ({suffix})"])], check=True, capture_output=True)
    rows = []
    for name, model in models.items():
        # A fresh parent per file: RUSAGE_CHILDREN's peak is then that one command's.
        code = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
                "subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, *cvm, "predict", "--model", str(model), str(images)],
                             check=True, capture_output=True, text=True).stdout.split()
        rows.append({"model file": name, "peak RSS MB": f"{int(out[1]) / 1024:.0f}", "wall s": f"{float(out[0]):.2f}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None)
    parser.add_argument("--checkpoint", type=Path, default=None, help="a split-digits run's final.ckpt")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    results = []
    for variant in ("released", "held"):
        out = subprocess.run([sys.executable, __file__, "--child", variant], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    released, held = results
    rows = [
        {"variant": r["variant"], "RSS before training MB": f"{r['before_training_mb']:.0f}",
         "training peak MB": f"{r['training_peak_mb']:.0f}"}
        for r in results
    ]
    print(table(rows, list(rows[0])))
    print(f"held - released at peak: {held['training_peak_mb'] - released['training_peak_mb']:.0f} MB; "
          f"the language model's parameters: {held['lm_parameters_mb']:.0f} MB")
    predicting = []
    if args.checkpoint is not None:
        with tempfile.TemporaryDirectory() as folder:
            predicting = predict_rows(args.checkpoint, Path(folder))
        print(f"\ncvm predict on 64 images, {args.checkpoint}:")
        print(table(predicting, list(predicting[0])))
    write_json(args.json, {"runs": results, "predict": predicting})


if __name__ == "__main__":
    main()
