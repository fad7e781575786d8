"""Scaling: time per experience as the stream grows, training and evaluation apart.

    python benchmarks/scaling.py [--json out.json]

Streams of synthetic 32x32 images with a fixed number of training images per
experience (so each experience costs the same to learn) and 20 test images
per class: 5 to 20 experiences, and 10 to 100 classes. Training time per
experience should stay flat as the stream goes on; evaluation after
experience i covers every test experience, so it grows with the number of
test experiences, not with i.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from _report import table, write_json

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.model import CVMModule
from cvm_lightning.streams import Benchmark
from cvm_lightning.streams.datasets import TensorImageDataset
from cvm_lightning.streams.registry import split_by_class
from cvm_lightning.training import ExperienceSchedule


def stream(n_classes: int, n_experiences: int, train_per_experience: int):
    per_class = max(1, train_per_experience * n_experiences // n_classes)
    def data(n):
        y = torch.arange(n_classes).repeat_interleave(n)
        return TensorImageDataset(torch.randn(len(y), 3, 32, 32), y)
    return split_by_class(data(per_class), data(20), n_classes, n_experiences, seed=0)


def measure(n_classes: int, n_experiences: int, train_per_experience: int) -> dict:
    scenario = stream(n_classes, n_experiences, train_per_experience)
    bank = ConceptBank.from_names([f"thing {i}" for i in range(n_classes)], text_model="random")
    module = CVMModule(bank, backbone="reduced_resnet18", input_size=32, buffer_size=200)
    benchmark = Benchmark("scaling", scenario, bank.class_names, in_chans=3, image_size=32)
    dm = ClassIncrementalDataModule.from_benchmark(benchmark, epochs_per_experience=1)
    timer = ExperienceTimes()
    trainer = pl.Trainer(
        callbacks=[ExperienceSchedule(), timer],
        max_epochs=dm.max_epochs,
        accelerator="cpu",
        num_sanity_val_steps=0,  # a sanity check would be timed as a first evaluation
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return {"classes": n_classes, "experiences": n_experiences, "train_s": timer.train, "eval_s": timer.evaluate}


class ExperienceTimes(pl.Callback):
    """Seconds of each experience's training epoch and of the evaluation after it."""

    def __init__(self) -> None:
        self.train, self.evaluate, self._start = [], [], 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        now = time.perf_counter()
        self.train.append(now - self._start)
        self._start = now

    def on_validation_end(self, trainer, pl_module):
        self.evaluate.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-experience", type=int, default=256)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pl.seed_everything(0, verbose=False)
    runs = [measure(c, e, args.train_per_experience) for c, e in ((10, 5), (20, 20), (100, 10), (100, 20))]
    rows = []
    for run in runs:
        t, ev = run["train_s"], run["eval_s"]
        half = len(t) // 2
        rows.append({
            "classes": run["classes"], "experiences": run["experiences"],
            "train s/exp, first half": f"{statistics.mean(t[:half]):.2f}",
            "train s/exp, second half": f"{statistics.mean(t[half:]):.2f}",
            "eval s, after first": f"{ev[0]:.2f}", "eval s, after last": f"{ev[-1]:.2f}",
            "eval s per test exp": f"{statistics.mean(ev) / run['experiences']:.3f}",
        })
    print(f"{args.train_per_experience} training images per experience, 1 epoch, buffer 200, reduced_resnet18 at 32px")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"runs": runs})


if __name__ == "__main__":
    main()
