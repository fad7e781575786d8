"""Zero-shot scoring corrections from scratch: does a per-concept correction from the replay memory help?

    python benchmarks/zero_shot_corrections.py --data-root DIR --seed 0 [--threads 2]

Trains CVM on split-CIFAR-10 (1,000 training and 500 test images a class,
memory 500, bfloat16 autocast, the other defaults of ``cvm run``). Before
each experience it scores that experience's test images among its own
classes and among all unseen classes, with plain cosine similarity and with
corrections computed from the replay memory's embeddings (no test data):
minus each concept's mean similarity to the memory, standardised by its mean
and spread, CSLS with 10 and 50 nearest memory samples, and centred on the
memory's mean embedding. Prints one JSON row per experience (accuracies and
the share of the most-chosen concept) and each scoring's final average
accuracy, and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.app.runner import build_cvm_module, prepare
from cvm_lightning.model import CVMModule
from cvm_lightning.model.cpu import set_threads
from cvm_lightning.training import ExperienceSchedule


def scorings(z: torch.Tensor, concepts: torch.Tensor, memory: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Scores of embeddings ``z`` against ``concepts``: cosine, and the corrections from ``memory`` embeddings."""
    s = z @ concepts.T
    out = {"raw": s}
    if memory is not None:
        to_memory = memory @ concepts.T  # memory samples x classes
        for k in (10, 50):
            out[f"csls{k}"] = s - to_memory.topk(min(k, len(memory)), dim=0).values.mean(0)
        out["mean"] = s - to_memory.mean(0)
        out["std"] = (s - to_memory.mean(0)) / to_memory.std(0).clamp_min(1e-6)
        center = memory.mean(0)
        out["center"] = F.normalize(z - center, dim=-1) @ F.normalize(concepts - center, dim=-1).T
    return out


class CorrectionsProbe(pl.Callback):
    """Scores each experience before it is trained, and the whole test stream after the last one."""

    def __init__(self, classes: list[list[int]], tests: list, epochs_per_experience: int) -> None:
        self.classes, self.tests, self.epochs = classes, tests, epochs_per_experience
        self.results: dict = {"rows": []}

    @torch.no_grad()
    def _scores(self, model: CVMModule, j: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x, y = (torch.cat(parts) for parts in zip(*((b[0], b[1]) for b in DataLoader(self.tests[j], batch_size=256))))
        memory = model.encode(model.memory_samples()[0])[1] if model.replay.classes else None
        return scorings(model.encode(x)[1], model.concepts.float(), memory), y

    def on_train_epoch_start(self, trainer: pl.Trainer, model: CVMModule) -> None:
        j, first_epoch = divmod(trainer.current_epoch, self.epochs)
        if first_epoch or j == 0:
            return
        unseen = sorted(c for cs in self.classes[j:] for c in cs)
        scores, y = self._scores(model, j)
        row: dict = {"experience": j}
        for name, s in scores.items():
            for label, columns in (("own", self.classes[j]), ("unseen", unseen)):
                columns = torch.tensor(columns)
                predicted = columns[s[:, columns].argmax(1)]
                row[f"{name}/{label}"] = float((predicted == y).float().mean())
            row[f"{name}/top_share"] = float(torch.bincount(predicted).max()) / len(predicted)  # among unseen
        self.results["rows"].append(row)
        print(json.dumps(row), flush=True)

    def on_train_end(self, trainer: pl.Trainer, model: CVMModule) -> None:
        per_experience: dict[str, list[float]] = {}
        for j in range(len(self.tests)):
            scores, y = self._scores(model, j)
            for name, s in scores.items():
                per_experience.setdefault(name, []).append(float((s.argmax(1) == y).float().mean()))
        self.results["final"] = {name: sum(v) / len(v) for name, v in per_experience.items()}
        print("final", json.dumps(self.results["final"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="CIFAR-10 in the ImageFolder layout (train/, test/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("zero_shot_corrections.json"),
                        help="a new file; an existing one is not replaced")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; pass another --out")

    config = RunConfig(benchmark="split-cifar10", data_root=args.data_root, train_per_class=1000, test_per_class=500,
                       buffer_size=500, precision="bf16-mixed", seed=args.seed, strategies=("cvm",))
    data, bank = prepare(config)
    set_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    model = build_cvm_module(config, data.benchmark, bank)
    probe = CorrectionsProbe([sorted(data.classes_of(j)) for j in range(data.n_experiences)],
                             [e.dataset.eval() for e in data.benchmark.test_stream], data.epochs_per_experience)
    trainer = pl.Trainer(callbacks=[ExperienceSchedule(), probe], max_epochs=data.max_epochs, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", precision=config.precision)
    trainer.fit(model, datamodule=data)
    args.out.write_text(json.dumps(probe.results, indent=1))


if __name__ == "__main__":
    main()
