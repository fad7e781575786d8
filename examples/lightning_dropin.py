"""CVM in a plain Lightning script: one `trainer.fit` over a class-incremental DataModule.

Runs as it is (offline, CPU) on split-digits. `--loop` shows the other form,
for plain dataloaders: `start_experience` and one `fit` per experience on
the same Trainer.

    python examples/lightning_dropin.py --epochs 3 [--loop]
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl

from cvm_lightning import ConceptBank, CVMModule
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.metrics import ContinualMetricsCallback
from cvm_lightning.training import ExperienceSchedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per experience")
    parser.add_argument("--backbone", default="reduced_resnet18", help="reduced_resnet18 keeps 32x32 inputs at full "
                                                                       "resolution")
    parser.add_argument("--input-size", type=int, default=32, help="8x8 digits are upsampled to this inside the model")
    parser.add_argument("--root", default="lightning_logs")
    parser.add_argument("--loop", action="store_true", help="one fit per experience instead of one fit")
    args = parser.parse_args()

    pl.seed_everything(0)
    dm = ClassIncrementalDataModule("split-digits", epochs_per_experience=args.epochs)  # images in [0, 1]
    bank = ConceptBank.from_names(dm.class_names, templates=dm.benchmark.templates)  # label i is class_names[i]
    model = CVMModule(bank, backbone=args.backbone, in_chans=1, input_size=args.input_size, buffer_size=200)
    metrics = ContinualMetricsCallback(n_experiences=dm.n_experiences)
    quiet = dict(default_root_dir=args.root, enable_progress_bar=False, enable_model_summary=False)

    if not args.loop:
        trainer = pl.Trainer(callbacks=[ExperienceSchedule(), metrics], **quiet)
        trainer.fit(model, datamodule=dm)
    else:
        trainer = pl.Trainer(max_epochs=0, callbacks=[metrics], **quiet)
        tests = dm.val_dataloader()  # dataloader j = test experience j
        for i in range(dm.n_experiences):
            model.start_experience(dm.classes_of(i), experience=i)
            trainer.fit_loop.max_epochs += args.epochs  # a second fit trains only when max_epochs grows
            trainer.fit(model, dm.train_dataloader_of(i))
            trainer.validate(model, tests, verbose=False)

    print("accuracy matrix (row i: after training experience i):")
    print(metrics.matrix.compute())
    print("after the stream: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.summary.items()))


if __name__ == "__main__":
    main()
