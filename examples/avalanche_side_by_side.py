"""CVM next to Avalanche's own strategies, in Avalanche's own loop and EvaluationPlugin.

    python examples/avalanche_side_by_side.py --epochs 2

Every strategy sees the same split-digits stream, backbone, optimiser,
epochs and memory budget; Avalanche's metrics score them all.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training import Naive, Replay
from avalanche.training.plugins import EvaluationPlugin

from cvm_lightning import ConceptBank, CVMModule
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.training import ClassifierNet, CVMStrategy


def evaluator() -> EvaluationPlugin:
    return EvaluationPlugin(accuracy_metrics(stream=True), forgetting_metrics(stream=True), loggers=[])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--buffer", type=int, default=200)
    parser.add_argument("--backbone", default="mobilenetv3_small_100")
    parser.add_argument("--input-size", type=int, default=32)
    args = parser.parse_args()

    bench = build_benchmark("split-digits", StreamConfig(seed=0))
    common = {"train_mb_size": 64, "train_epochs": args.epochs, "eval_mb_size": 256}

    def cvm():
        bank = ConceptBank.from_names(bench.class_names, templates=bench.templates)
        model = CVMModule(bank, backbone=args.backbone, in_chans=1, input_size=args.input_size, buffer_size=args.buffer)
        return CVMStrategy(model=model, evaluator=evaluator(), **common)

    def baseline(strategy_cls, **extra):
        model = ClassifierNet(args.backbone, 10, in_chans=1, input_size=args.input_size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        return strategy_cls(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                            evaluator=evaluator(), **common, **extra)

    strategies = {
        "cvm": cvm,
        "naive": lambda: baseline(Naive),
        "replay": lambda: baseline(Replay, mem_size=args.buffer),
    }
    print(f"{'strategy':10s} {'stream accuracy':>16s} {'stream forgetting':>18s}")
    for name, make in strategies.items():
        pl.seed_everything(0, verbose=False)
        strategy = make()
        for experience in bench.train_stream:
            strategy.train(experience)
            metrics = strategy.eval(bench.test_stream)  # forgetting needs an eval after each experience
        accuracy = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream"))
        forgetting = next(v for k, v in metrics.items() if k.startswith("StreamForgetting"))
        print(f"{name:10s} {accuracy:16.3f} {forgetting:18.3f}")


if __name__ == "__main__":
    main()
