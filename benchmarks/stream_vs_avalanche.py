"""The Lightning stream path vs Avalanche's own loop, same model, data and epochs.

    python benchmarks/stream_vs_avalanche.py [--epochs 2] [--rounds 3] [--json out.json]

Three ways to train the same stream (split-digits, 5 experiences, reduced
ResNet-18 at 32x32, no replay, no evaluation): CVMModule through
one ``trainer.fit`` over ``ClassIncrementalDataModule``; the same CVMModule in Avalanche's loop
(``CVMStrategy``, a ``SupervisedTemplate``); and Avalanche's ``Naive`` with
the same backbone and a linear head. Rounds alternate the three; figures are
medians. Target: Avalanche's time / Lightning's time >= 1.0.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from _report import table, write_json
from avalanche.training import Naive

from cvm_lightning.app.runner import RunConfig, build_cvm_module
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.training import ClassifierNet, CVMStrategy, ExperienceSchedule, RunState


def lightning(config, benchmark) -> float:
    module = build_cvm_module(config, benchmark)
    dm = ClassIncrementalDataModule.from_benchmark(
        benchmark, epochs_per_experience=config.epochs_per_experience, batch_size=config.batch_size
    )
    clock = RunState()
    trainer = pl.Trainer(
        callbacks=[ExperienceSchedule(), clock],
        max_epochs=dm.max_epochs,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=dm)
    return clock.train_seconds


def avalanche_loop(make_strategy, benchmark) -> float:
    strategy = make_strategy()
    start = time.perf_counter()
    for experience in benchmark.train_stream:
        strategy.train(experience, num_workers=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    config = RunConfig(
        strategies=("cvm",), epochs_per_experience=args.epochs, buffer_size=0, recalibrate_bn=False, progress=False
    )
    benchmark = build_benchmark(config.benchmark, StreamConfig(seed=0))
    common = dict(
        train_mb_size=config.batch_size, train_epochs=config.epochs_per_experience, device="cpu", evaluator=None
    )

    def cvm_strategy():
        module = build_cvm_module(config, benchmark)
        return CVMStrategy(model=module, **common)

    def naive():
        model = ClassifierNet(config.backbone, 10, in_chans=1, input_size=config.input_size)
        return Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr), **common)

    times = {"lightning": [], "cvm_in_avalanche": [], "naive": []}
    for _ in range(args.rounds):
        pl.seed_everything(0, verbose=False)
        times["lightning"].append(lightning(config, benchmark))
        pl.seed_everything(0, verbose=False)
        times["cvm_in_avalanche"].append(avalanche_loop(cvm_strategy, benchmark))
        pl.seed_everything(0, verbose=False)
        times["naive"].append(avalanche_loop(naive, benchmark))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        {
            "path": "CVMModule, one trainer.fit (ExperienceSchedule)",
            "train s": f"{med['lightning']:.1f}",
            "Avalanche / this": "-",
        },
        {
            "path": "CVMModule, Avalanche loop (CVMStrategy)",
            "train s": f"{med['cvm_in_avalanche']:.1f}",
            "Avalanche / this": f"{med['cvm_in_avalanche'] / med['lightning']:.2f}x",
        },
        {
            "path": "Avalanche Naive, linear head",
            "train s": f"{med['naive']:.1f}",
            "Avalanche / this": f"{med['naive'] / med['lightning']:.2f}x",
        },
    ]
    print(
        f"split-digits, {config.backbone} at {config.input_size}px, {args.epochs} epochs x 5 experiences, "
        f"batch {config.batch_size}, median of {args.rounds} rounds; last column: Avalanche time / Lightning time"
    )
    print(table(rows, list(rows[0])))
    write_json(args.json, {"seconds": times, "median": med})


if __name__ == "__main__":
    main()
