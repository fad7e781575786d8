"""CIFAR-100, 10 x 10 classes (add --n-experiences 20 for 20 x 5).

    python examples/split_cifar100.py --data-root DIR [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('split-cifar100', ['--train-per-class', '100'])
