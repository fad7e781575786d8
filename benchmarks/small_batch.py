"""CVM's training step at small batches with replay, against a plain PyTorch loop with the same model and optimiser.

    python benchmarks/small_batch.py [--batch-size 10] [--replay 10] [--steps 60] [--rounds 3] [--threads N]
                                     [--json out.json]

Online continual learning trains on a few images a step (Avalanche's
reference protocols use 10 new and 10 replayed), where the per-step work of
a framework weighs more than at batch 64. Both sides train the same
``CVMModule`` (``reduced_resnet18`` at 32x32, ETF concepts, SGD at 0.1
without momentum, the clb-split-cifar10 settings) on the second experience
of a two-experience stream of random images, with a replay memory filled by
the first:

- **CVM in Lightning**: one ``trainer.fit`` over ``ClassIncrementalDataModule``,
  the module's own replay memory, loss and hooks (what ``cvm run`` runs);
- **plain PyTorch**: a hand-written loop over the same batches, replayed
  samples drawn at random from a tensor copy of the same memory, the same
  ``batch_loss`` plus the drift penalty, ``zero_grad``/``backward``/``step``.

Rounds alternate the two; each figure is the median step time over the
rounds' timed steps (after warm-up). The ratio is plain step time over CVM's:
1.0 means no overhead.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from _lightning import StepTimer
from _report import table, write_json

from cvm_lightning.concepts import ConceptBank, TextModelSpec
from cvm_lightning.data import ClassIncrementalDataModule
from cvm_lightning.model import CVMModule
from cvm_lightning.training import ExperienceSchedule

N_CLASSES, PER_CLASS = 10, 200


def stream(batch_size: int, seed: int) -> ClassIncrementalDataModule:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (N_CLASSES * PER_CLASS, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(N_CLASSES).repeat_interleave(PER_CLASS)
    data = torch.utils.data.TensorDataset(images, labels)
    return ClassIncrementalDataModule.from_datasets(
        data, data, [f"class {c}" for c in range(N_CLASSES)], n_experiences=2, seed=seed, batch_size=batch_size,
        epochs_per_experience=1, drop_last=True, shuffle_classes=False,
    )


def new_module(data: ClassIncrementalDataModule, replay: int) -> CVMModule:
    bank = ConceptBank.from_names(data.class_names, text_model=TextModelSpec(name="etf"))
    return CVMModule(bank, in_chans=3, input_size=32, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0,
                     buffer_size=1000, replay_batch_size=replay, recalibrate_bn=False, seed=0)


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kwargs)


def lightning_step_seconds(batch_size: int, replay: int, steps: int, warmup: int) -> float:
    """Median step time of CVM's second experience in one ``trainer.fit`` (the first fills the memory)."""
    data = stream(batch_size, seed=0)
    module = new_module(data, replay)
    timer = StepTimer(skip=0)
    trainer = quiet_trainer(callbacks=[ExperienceSchedule(), timer], max_epochs=data.max_epochs)
    trainer.fit(module, datamodule=data)
    second = timer.durations[-(len(data.train_dataloader_of(1))):]
    return statistics.median(second[warmup : warmup + steps])


def plain_step_seconds(batch_size: int, replay: int, steps: int, warmup: int) -> float:
    """Median step time of a hand-written loop with the same model, optimiser, loss and replayed batch size."""
    data = stream(batch_size, seed=0)
    module = new_module(data, replay)
    quiet_trainer(callbacks=[ExperienceSchedule()], max_epochs=1).fit(module, datamodule=data)  # fills the memory
    memory_x, memory_y = module.memory_samples()
    _, memory_z = module.encode(memory_x)
    module.train()
    module.observe(torch.tensor(data.classes_of(1)))
    optimizer = module.build_optimizer()
    durations = []
    for x, y, *_ in data.train_dataloader_of(1):
        start = time.perf_counter()
        picked = torch.randint(len(memory_y), (replay,))
        mixed_x, mixed_y = torch.cat([x, memory_x[picked]]), torch.cat([y, memory_y[picked]])
        z = module.head(module.encoder(mixed_x))
        loss = module.batch_loss(z, mixed_y, len(x))
        loss = loss + (1.0 - (z[len(x):] * memory_z[picked]).sum(dim=-1)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations[warmup : warmup + steps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--replay", type=int, default=10, help="replayed samples a step")
    parser.add_argument("--steps", type=int, default=60, help="timed steps a round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    per_experience = N_CLASSES // 2 * PER_CLASS // args.batch_size
    if args.warmup + args.steps > per_experience:
        parser.error(f"--warmup + --steps must be at most {per_experience}, an experience's steps")
    times: dict[str, list[float]] = {"plain PyTorch": [], "CVM in Lightning": []}
    for _ in range(args.rounds):
        times["plain PyTorch"].append(plain_step_seconds(args.batch_size, args.replay, args.steps, args.warmup))
        times["CVM in Lightning"].append(lightning_step_seconds(args.batch_size, args.replay, args.steps,
                                                                args.warmup))
    plain = statistics.median(times["plain PyTorch"])
    rows = [{"loop": name, "ms/step": f"{1000 * statistics.median(t):.1f}",
             "speed vs plain": f"{plain / statistics.median(t):.2f}x"} for name, t in times.items()]
    print(f"batch {args.batch_size} + {args.replay} replayed, reduced_resnet18 32x32, SGD, threads "
          f"{torch.get_num_threads()}, median over {args.rounds} rounds of {args.steps} steps")
    print(table(rows, ["loop", "ms/step", "speed vs plain"]))
    write_json(args.json, {"rows": rows, "seconds": times, "args": vars(args)})


if __name__ == "__main__":
    main()
