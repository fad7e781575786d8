"""ER-ACE on clb-split-cifar10 through ``cvm run`` against Avalanche's own way of running it, side by side.

    python benchmarks/clb_peer.py --data-root CIFAR10 [--seeds 0] [--train-per-class N] [--threads 1] [--json out.json]

The peer builds the run as Avalanche's continual-learning-baselines script
for split-CIFAR-10 does, from Avalanche's own parts: ``nc_benchmark`` with
the fixed class order 0..9 and the CIFAR normalisation as its transform,
``SlimResNet18`` with an ``IncrementalClassifier``, plain SGD at 0.1,
``ER_ACE`` with a 1,000-sample memory and replayed batches of 10, batches of
10 with ``drop_last``, an evaluation plugin that computes stream accuracy,
and an evaluation of the experiences seen so far after each one. Both sides
read the same decoded images (the benchmark's own loader, once), so the
comparison is of the training loops alone. Reported per seed: training
seconds (the ``train`` calls), final average accuracy, and the ratio of the
two times (``cvm run`` over the peer).

The same seed does not give the two runs the same random numbers, and one
float rounding apart is enough for two runs of this SGD (batches of 10 at
0.1) to part within a few steps, so a difference in accuracy on one seed is
a difference between two seeds. ``--align-random-numbers`` changes the peer
in the places where its random numbers or its arithmetic differ from ``cvm
run``'s, and nowhere else: its backbone is initialised again from the seed
after the linear layer the script draws and then replaces; it takes each
experience's samples in the stream's order (``nc_benchmark`` regroups them
in label order); and it evaluates the whole test stream after each
experience with the generators put back afterwards, as ``cvm run`` does (an
evaluation grows Avalanche's incremental head to the classes it sees). The
two runs then compute the same numbers, so equal accuracies show that the
loops are the same.
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

from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.app.runner import run
from cvm_lightning.settings import PIXEL_STATISTICS
from cvm_lightning.streams import StreamConfig, build_benchmark
from cvm_lightning.training.checkpoints import random_state_kept

PROTOCOL = "clb-split-cifar10"


def decoded_splits(data_root: Path, train_per_class: int | None, seed: int) -> tuple[list, list]:
    """Each experience's training and test images as tensors, in the stream's order, decoded once by the package.

    ``seed`` picks the images kept under ``train_per_class``, as it does for ``cvm run``.
    """
    benchmark = build_benchmark("split-cifar10", StreamConfig(data_root=data_root, shuffle_classes=False,
                                                              train_per_class=train_per_class, seed=seed))

    def stacked(experience):
        pairs = [(x, int(y)) for x, y, *_ in experience.dataset.eval()]
        return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])

    return [stacked(e) for e in benchmark.train_stream], [stacked(e) for e in benchmark.test_stream]


class LabelledTensors(torch.utils.data.TensorDataset):
    """Images and labels with the ``targets`` list a torchvision dataset has, which ``nc_benchmark`` reads."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(x, y)
        self.targets = y.tolist()


def peer(train, test, seed: int, align: bool = False) -> tuple[float, float]:
    """Avalanche's ER-ACE run the way its reference script runs it; returns (training seconds, final accuracy).

    ``align`` draws the random numbers as ``cvm run`` does (see the module's docstring).
    """
    import contextlib
    import random

    from avalanche.benchmarks import dataset_benchmark, nc_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.models import SlimResNet18
    from avalanche.models.dynamic_modules import IncrementalClassifier
    from avalanche.training import ER_ACE
    from avalanche.training.plugins import EvaluationPlugin
    from torchvision import transforms

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    mean, std = PIXEL_STATISTICS["cifar10-avalanche"]
    normalize = transforms.Normalize(mean, std)
    if align:  # each experience's samples in the order cvm run's stream holds them
        scenario = dataset_benchmark([LabelledTensors(x, y) for x, y in train],
                                     [LabelledTensors(x, y) for x, y in test],
                                     train_transform=normalize, eval_transform=normalize)
    else:  # the script's: nc_benchmark puts each experience's classes in label order
        datasets = [LabelledTensors(torch.cat([x for x, _ in split]), torch.cat([y for _, y in split]))
                    for split in (train, test)]
        scenario = nc_benchmark(*datasets, n_experiences=5, task_labels=False, seed=0,
                                fixed_class_order=list(range(10)), train_transform=normalize,
                                eval_transform=normalize)
    model = SlimResNet18(1)
    if align:  # the backbone's draws again, without the replaced layer's after them
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
    model.linear = IncrementalClassifier(model.linear.in_features, 1)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = ER_ACE(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=10,
                      eval_mb_size=64, mem_size=1000, batch_size_mem=10, device="cpu", evaluator=evaluator)
    seconds = 0.0
    for t, experience in enumerate(scenario.train_stream):
        start = time.perf_counter()
        strategy.train(experience, num_workers=0, drop_last=True)
        seconds += time.perf_counter() - start
        with random_state_kept() if align else contextlib.nullcontext():
            strategy.eval(scenario.test_stream if align else scenario.test_stream[: t + 1])
    metrics = strategy.eval(scenario.test_stream)
    return seconds, float(metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"])


def ours(data_root: Path, train_per_class: int | None, seed: int) -> tuple[float, float]:
    """ER-ACE through ``cvm run --protocol clb-split-cifar10``; returns (training seconds, final accuracy)."""
    config = RunConfig.from_protocol(PROTOCOL, data_root=data_root, train_per_class=train_per_class, seed=seed,
                                     strategies=("er_ace",), progress=False)
    with tempfile.TemporaryDirectory() as out:
        result = run(config, Path(out), report=lambda line: None)["strategies"]["er_ace"]
    return result["train_seconds"], result["final_avg_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="CIFAR-10 in the layout split-cifar10 reads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--train-per-class", type=int, default=None, help="fewer training images, for a quick look")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--align-random-numbers", action="store_true",
                        help="the peer draws its random numbers as cvm run does (see above)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        train, test = decoded_splits(args.data_root, args.train_per_class, seed)
        peer_seconds, peer_accuracy = peer(train, test, seed, args.align_random_numbers)
        our_seconds, our_accuracy = ours(args.data_root, args.train_per_class, seed)
        rows.append({"seed": seed, "Avalanche s": f"{peer_seconds:.0f}", "cvm run s": f"{our_seconds:.0f}",
                     "time ratio": f"{our_seconds / peer_seconds:.2f}", "Avalanche acc": f"{peer_accuracy:.3f}",
                     "cvm run acc": f"{our_accuracy:.3f}", "acc difference": f"{our_accuracy - peer_accuracy:+.3f}"})
    aligned = ", random numbers aligned" if args.align_random_numbers else ""
    print(f"ER-ACE, {PROTOCOL}, {sum(len(y) for _, y in train)} training images, "
          f"threads {torch.get_num_threads()}{aligned}")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
