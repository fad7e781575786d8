"""Threads and oversubscription: one training process alone, then two at once, with and without splitting the cores.

    python benchmarks/threads.py [--steps 20] [--json out.json]

Each worker is a fresh process that trains ``CVMModule``'s backbone and
head (``reduced_resnet18``, batch 64, 32x32, float32) for ``--steps`` steps
with ``torch.set_num_threads(T)``, the same call ``cvm run --threads T``
makes. The table gives each layout's images/s per process and in total.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _report import table, write_json

from cvm_lightning.hardware import available_cores


def worker(threads: int, steps: int) -> None:
    import torch
    import torch.nn.functional as F

    from cvm_lightning.model.cpu import set_threads
    from cvm_lightning.training.baselines import ClassifierNet

    set_threads(threads)
    torch.manual_seed(0)
    net = ClassifierNet("reduced_resnet18", 10, input_size=32)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    for step in range(steps + 3):
        if step == 3:  # after warm-up
            start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(json.dumps({"img_per_s": 64 * steps / (time.perf_counter() - start)}))


def run_together(threads: int, processes: int, steps: int) -> list[float]:
    """Images/s of each of ``processes`` workers started at once with ``threads`` threads each."""
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(steps)]
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1])["img_per_s"] for p in running]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args.threads, args.steps)
        return
    cores = available_cores()
    layouts = [
        (f"1 process, {cores} threads (alone)", cores, 1),
        (f"2 processes, {cores} threads each (oversubscribed)", cores, 2),
        (f"2 processes, {max(1, cores // 2)} thread(s) each (--threads {max(1, cores // 2)})", max(1, cores // 2), 2),
    ]
    rows = []
    for label, threads, processes in layouts:
        rates = run_together(threads, processes, args.steps)
        rows.append({"layout": label, "img/s per process": " / ".join(f"{r:.0f}" for r in rates),
                     "img/s in total": f"{sum(rates):.0f}"})
    print(f"{cores} cores, reduced_resnet18 training steps, batch 64, {args.steps} timed steps")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"rows": rows, "cores": cores})


if __name__ == "__main__":
    main()
