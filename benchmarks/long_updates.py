"""Many small updates on site, one after another: does the model keep what it knew?

    python benchmarks/long_updates.py --checkpoint RUN/final.ckpt --data-root CIFAR [--updates 10]
        [--per-class 20] [--test-per-class 50] [--epochs 5] [--lr 3e-4] [--new-class-method prototypes]
        [--json out.json] [--plot out.png]

``RUN/final.ckpt`` is a model trained by ``cvm run --benchmark imagefolder``
on some of the classes of ``CIFAR`` (an ImageFolder: ``train/<class>/``,
``test/<class>/``). Updates alternate: an odd one is the known classes
under the next condition of :data:`CONDITIONS` (a deterministic
corruption, seeded); an even one is the next class the model does not know
yet, in the original condition. Each update is one ``cvm learn`` (the
library's :func:`~cvm_lightning.deploy.learn.learn_images`) on
``--per-class`` fresh training images a class, starting from the previous
update's checkpoint. After each update the script scores ``--test-per-class``
held-out images of every class learned so far, in the original condition
and in every condition met so far, and the classes the model started with
alone in the original condition ("first classes"), and records the memory's size, the
update's wall time and the process's peak resident memory during it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _report import table, write_json
from PIL import Image

from cvm_lightning.app.resources import PeakRSS
from cvm_lightning.deploy.learn import accuracy, learn_images
from cvm_lightning.deploy.predict import load_checkpoint
from cvm_lightning.image_files import IMAGE_SUFFIXES
from cvm_lightning.streams.benchmarks import RGB_CONDITIONS
from cvm_lightning.streams.corruptions import corrupt
from cvm_lightning.streams.images import ImageFileDataset

# The conditions an update meets, in order: the domain-incremental streams' corruptions, bar the clean one.
CONDITIONS = [name for name in RGB_CONDITIONS if name != "clean"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True, help="an ImageFolder with train/ and test/")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=20, help="training images a class in each update")
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--new-class-method", choices=("finetune", "prototypes"), default="finetune",
                        help="how the updates that bring a new class learn it (the known-class ones fine-tune)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    model = load_checkpoint(args.checkpoint)
    known = [model.class_names[i] for i in model.seen.nonzero().flatten().tolist()]
    spare = [name for name in sorted(p.name for p in (args.data_root / "train").iterdir()) if name not in known]
    conditions = list(CONDITIONS)
    work = Path(tempfile.mkdtemp(prefix="cvm-long-updates-"))
    # Training images nobody has used: from the end of each class's list (cvm run takes its subsample with a seed).
    unused = {name: images_of(args.data_root / "train", name)[::-1] for name in [*known, *spare]}
    tests = {name: images_of(args.data_root / "test", name)[-args.test_per_class:] for name in [*known, *spare]}
    met: list[str | None] = [None]  # the original condition first
    learned = list(known)
    checkpoint, rows, history = args.checkpoint, [], []

    def take(name: str) -> list[Path]:
        files, unused[name] = unused[name][:args.per_class], unused[name][args.per_class:]
        return files

    def scores(module) -> dict[str, float]:
        names, found = module.class_names, {}
        for condition in met:
            label = condition or "original"
            paths, targets = [], []
            for name in learned:
                folder = work / "eval" / label / name
                if not folder.exists():
                    write_condition(tests[name], folder, condition, args.seed)
                files = images_of(work / "eval" / label, name)
                paths += files
                targets += [names.index(name)] * len(files)
            found[label] = accuracy(module, ImageFileDataset(paths, targets, _side(module)))
            if condition is None:  # the classes the model started with, among all it knows now
                first = [(p, t) for p, t in zip(paths, targets) if names[t] in known]
                found["first classes"] = accuracy(module, ImageFileDataset(*map(list, zip(*first)), _side(module)))
        return found

    start = scores(model)
    history.append({"update": 0, "what": "trained", **start})
    for number in range(1, args.updates + 1):
        data = work / f"update{number}"
        if number % 2 and len(met) <= len(conditions):  # the known classes under the next condition
            condition = conditions[len(met) - 1]
            met.append(condition)
            classes, what = learned, f"{condition}: {len(learned)} known classes"
        elif spare:  # the next new class, in the original condition
            condition, classes = None, [spare.pop(0)]
            learned.append(classes[0])
            what = f"new class {classes[0]}"
        else:
            break
        for name in classes:
            write_condition(take(name), data / "train" / name, condition, args.seed + number)
            write_condition(tests[name][:5], data / "test" / name, condition, args.seed + number)
        out = work / f"after{number}.ckpt"
        begin = time.perf_counter()
        with PeakRSS() as peak:
            method = args.new_class_method if condition is None else "finetune"
            learn_images(checkpoint, data, epochs=args.epochs, lr=args.lr, method=method, out=out)
        seconds = time.perf_counter() - begin
        module = load_checkpoint(out)
        found = scores(module)
        history.append({"update": number, "what": what, **found})
        rows.append({"update": number, "what": what, "s": f"{seconds:.1f}", "peak RSS MB": f"{peak.peak_mb:.0f}",
                     "memory": len(module.replay), **{k: f"{v:.3f}" for k, v in found.items()}})
        checkpoint = out
        print(table(rows[-1:], list(rows[-1])))
    columns = ["update", "what", "s", "peak RSS MB", "memory", "first classes", *(c or "original" for c in met)]
    print(f"\nstart: {', '.join(f'{k} {v:.3f}' for k, v in start.items())}")
    print(table(rows, columns))
    drop = start["first classes"] - min(h["first classes"] for h in history)
    print(f"largest drop of the first classes, original condition, below their start: {100 * drop:.1f} points")
    write_json(args.json, {"start": start, "history": history, "rows": rows, "args": vars(args) | {
        "checkpoint": str(args.checkpoint), "data_root": str(args.data_root), "plot": str(args.plot)}})
    if args.plot is not None:
        plot(history, args.plot, f"new classes by {args.new_class_method}, known ones fine-tuned at lr {args.lr:g}")


def _side(module) -> int:
    from cvm_lightning.deploy.export import trained_image_size

    return trained_image_size(module)


def plot(history: list[dict], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [key for key in history[-1] if key not in ("update", "what")]
    for label in labels:
        points = [(h["update"], h[label]) for h in history if label in h]
        axis.plot(*zip(*points), marker="o", label=label)
    axis.set_xlabel("update")
    axis.set_ylabel("accuracy on the classes learned so far")
    axis.set_title(f"Successive small updates with cvm learn\n{subtitle}", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
