"""CIFAR-10, 5 x 2 classes, CPU-scaled (500 training images a class).

    python examples/split_cifar10.py --data-root DIR [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('split-cifar10', ['--train-per-class', '500'])
