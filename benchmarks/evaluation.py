"""What evaluation costs a run, and what ``--eval-every`` saves.

    python benchmarks/evaluation.py --data-root DIR [--benchmark split-cifar10] [--train-per-class 100]
        [--epochs 1] [--strategies cvm,der] [--buffer 500] [--json out.json]

Runs the same ``cvm run`` configuration in this one process twice: with the
test stream evaluated after every experience (``--eval-every 1``, the
default) and only after the last one (``--eval-every`` = the number of
experiences). Each run builds its stream (decoding the images) as ``cvm
run`` does, so both pay that alike. It prints each run's wall time, the
part of it outside training (evaluations, zero-shot scoring, set-up), each
strategy's final average accuracy (the same in both: skipping an evaluation
changes no training), and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from _report import table, write_json

from cvm_lightning.app.run_config import RunConfig
from cvm_lightning.app.runner import prepare, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--benchmark", default="split-cifar10")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--strategies", default="cvm,der")
    parser.add_argument("--buffer", type=int, default=500)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    settings = dict(benchmark=args.benchmark, data_root=args.data_root, train_per_class=args.train_per_class,
                    epochs_per_experience=args.epochs, strategies=args.strategies, buffer_size=args.buffer,
                    progress=False)
    data, _ = prepare(RunConfig(**settings))  # the stream's size, and bad settings said before any run
    n = data.n_experiences
    rows, results = [], {}
    for every in (1, n):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = run(RunConfig(**settings, eval_every=every), Path(out), report=lambda _: None)
            wall = time.perf_counter() - start
        strategies = result["strategies"]
        outside = wall - sum(r["train_seconds"] for r in strategies.values())
        results[every] = {"wall_s": round(wall, 1), "outside_training_s": round(outside, 1),
                          **{name: r["final_avg_accuracy"] for name, r in strategies.items()}}
        rows.append({"--eval-every": every, "evaluations": len(range(every - 1, n, every)) + (n % every != 0),
                     "wall s": f"{wall:.1f}", "outside training s": f"{outside:.1f}",
                     **{f"{name} acc": f"{r['final_avg_accuracy']:.3f}" for name, r in strategies.items()}})
    print(f"{args.benchmark}, {args.train_per_class} training images a class, {len(data.benchmark.test_stream)} "
          f"test experiences of {sum(len(e.dataset) for e in data.benchmark.test_stream)} images, {args.epochs} "
          f"epoch(s), strategies {args.strategies}")
    print(table(rows, list(rows[0])))
    print(f"evaluating only after the last experience: {results[1]['wall_s'] / results[n]['wall_s']:.2f}x faster")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
