"""CVMModule and the continual-metrics callback inside a plain Lightning script.

Runs as it is (offline, CPU): split-digits, one `fit` per experience on one
Trainer, the test experiences as validation dataloaders.

    python examples/lightning_dropin.py --epochs 3
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from cvm_lightning import CVMModule, ConceptBank
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.streams import StreamConfig, build_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbone", default="reduced_resnet18", help="reduced_resnet18 keeps 32x32 inputs at full resolution")
    parser.add_argument("--input-size", type=int, default=32, help="8x8 digits are upsampled to this inside the model")
    parser.add_argument("--root", default="lightning_logs")
    args = parser.parse_args()

    pl.seed_everything(0)
    bench = build_benchmark("split-digits", StreamConfig(seed=0))  # images are floats in [0, 1]
    bank = ConceptBank.from_names(bench.class_names, templates=bench.templates)  # label i is class_names[i]
    model = CVMModule(bank, backbone=args.backbone, in_chans=1, input_size=args.input_size, buffer_size=200)

    # The only additions to an ordinary Lightning script: the callback, and
    # the test experiences passed as validation dataloaders.
    metrics = ContinualMetricsCallback(n_experiences=bench.n_experiences)
    trainer = pl.Trainer(max_epochs=0, callbacks=[metrics], default_root_dir=args.root, enable_progress_bar=False,
                         enable_model_summary=False)  # one summary per fit would print five
    tests = [DataLoader(exp.dataset.eval(), batch_size=256) for exp in bench.test_stream]

    for i, experience in enumerate(bench.train_stream):
        model.start_experience(sorted(experience.classes_in_this_experience), experience=i)
        trainer.fit_loop.max_epochs += args.epochs
        trainer.fit(model, DataLoader(experience.dataset.train(), batch_size=64, shuffle=True))
        trainer.validate(model, tests, verbose=False)
        print(f"after experience {i}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.summary.items()))

    print("accuracy matrix (row i: after training experience i):")
    print(metrics.matrix.compute())


if __name__ == "__main__":
    main()
