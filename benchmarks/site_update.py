"""One update on site: a known condition shifts, and ``cvm learn`` re-trains on a few images of it.

    python benchmarks/site_update.py --checkpoint RUN/final.ckpt [RUN_RANDOM/final.ckpt ...] --data-root CIFAR \
        [--conditions dark "low contrast"] [--per-class 20] [--test-per-class 250] [--epochs 5] [--lr 3e-4] \
        [--seeds 0 1 2] [--json out.json]

Each ``RUN/final.ckpt`` is a model trained by ``cvm run --benchmark
imagefolder`` on some classes of ``CIFAR`` (an ImageFolder), from a folder
that leaves out the last images of each class in file-name order: the
updates take their fresh images from there. Give a model trained with
``--text-model random`` beside it for the control. For each model,
condition (``cvm_lightning.streams.corruptions``) and seed, the script
writes ``--per-class`` of those fresh training images of each known class
under the condition (a different set for each seed), runs one
``cvm learn`` (:func:`~cvm_lightning.deploy.learn.learn_images`) from the
model, and scores the same ``--test-per-class`` test images a class in the
original condition and under the condition, before and after. It reports
what the condition cost, the share of it the update won back, and what the
original condition lost, as mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from _report import table, write_json
from PIL import Image

from cvm_lightning.app.tables import mean_std, mean_std_text
from cvm_lightning.deploy.export import trained_image_size
from cvm_lightning.deploy.learn import accuracy, learn_images
from cvm_lightning.deploy.predict import load_checkpoint
from cvm_lightning.image_files import IMAGE_SUFFIXES
from cvm_lightning.streams.corruptions import corrupt
from cvm_lightning.streams.images import ImageFileDataset


def images_of(root: Path, name: str) -> list[Path]:
    return sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def write_condition(files: list[Path], target: Path, condition: str | None, seed: int) -> None:
    """``files`` under ``condition`` (``None``: as they are), as PNGs in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(files):
        image = Image.open(path).convert("RGB")
        if condition is not None:  # the noise seeded per image
            pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None]
            pixels = corrupt(pixels, condition, seed * 100_003 + index)[0]
            image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        image.save(target / f"{path.stem}.png")


def scored(module, root: Path, known: list[str]) -> float:
    """``module``'s accuracy on ``root/<class>/*`` over the ``known`` classes."""
    paths, targets = [], []
    for name in known:
        files = images_of(root, name)
        paths += files
        targets += [module.class_names.index(name)] * len(files)
    return accuracy(module, ImageFileDataset(paths, targets, trained_image_size(module)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    parser.add_argument("--data-root", type=Path, required=True, help="an ImageFolder with train/ and test/")
    parser.add_argument("--conditions", nargs="+", default=["dark", "low contrast"])
    parser.add_argument("--per-class", type=int, default=20, help="training images a class in the update")
    parser.add_argument("--test-per-class", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="cvm-site-update-"))
    rows, cells = [], []
    for checkpoint in args.checkpoint:
        model = load_checkpoint(checkpoint)
        concepts = model.hparams["concept_source"]["text_model"]["name"]
        known = [model.class_names[i] for i in model.seen.nonzero().flatten().tolist()]
        tests = {name: images_of(args.data_root / "test", name)[-args.test_per_class:] for name in known}
        for condition in args.conditions:
            evaluation = {}
            for label, applied in (("original", None), ("shifted", condition)):
                for name in known:  # the test images' noise is seeded once: every seed scores the same pixels
                    write_condition(tests[name], work / "eval" / label / condition / name, applied, 0)
                evaluation[label] = work / "eval" / label / condition
            before = {label: scored(model, root, known) for label, root in evaluation.items()}
            after = []
            for seed in args.seeds:
                data = work / f"{checkpoint.parent.name}-{condition}-{seed}"
                for name in known:
                    unused = images_of(args.data_root / "train", name)[::-1]
                    fresh = unused[seed * args.per_class : (seed + 1) * args.per_class]
                    write_condition(fresh, data / "train" / name, condition, seed + 1)
                    write_condition(tests[name][:5], data / "test" / name, condition, seed + 1)
                pl.seed_everything(seed, verbose=False)
                out = data / "after.ckpt"
                learn_images(checkpoint, data, epochs=args.epochs, lr=args.lr, out=out)
                updated = load_checkpoint(out)
                after.append({label: scored(updated, root, known) for label, root in evaluation.items()})
                cells.append({"checkpoint": str(checkpoint), "concepts": concepts, "condition": condition,
                              "seed": seed, "before": before, "after": after[-1]})
            lost = before["original"] - before["shifted"]
            # A condition that cost nothing leaves nothing to win back: n/a.
            won = mean_std([(a["shifted"] - before["shifted"]) / lost if lost > 0 else math.nan for a in after])
            dropped = mean_std([before["original"] - a["original"] for a in after])
            rows.append({
                "concepts": concepts, "condition": condition,
                "original before": f"{before['original']:.3f}",
                "original after": mean_std_text(*mean_std([a["original"] for a in after])),
                "shifted before": f"{before['shifted']:.3f}",
                "shifted after": mean_std_text(*mean_std([a["shifted"] for a in after])),
                "cost (points)": f"{100 * lost:.1f}",
                "share won back": mean_std_text(*won),
                "original lost (points)": f"{100 * dropped[0]:.1f} ± {100 * dropped[1]:.1f}",
            })
            print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\n{len(args.seeds)} seeds, {args.per_class} images a class, {args.epochs} epochs at lr {args.lr:g}, "
          f"{args.test_per_class} test images a class in each condition")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"rows": rows, "cells": cells, "args": {
        **vars(args), "checkpoint": [str(c) for c in args.checkpoint], "data_root": str(args.data_root)}})


if __name__ == "__main__":
    main()
