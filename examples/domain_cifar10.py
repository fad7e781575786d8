"""CIFAR-10 under seven conditions, domain-incremental, CPU-scaled (1,400 training images a class in all).

    python examples/domain_cifar10.py --data-root DIR [any `cvm run` flag, e.g. --seeds 0 1 2 --strategies cvm,replay]

Every experience holds all 10 classes, under the next condition (clean, dark, low contrast, blur, noise,
colour cast, jpeg). Prints the results table and the table of each condition, and writes results.json,
results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark("domain-cifar10", ["--train-per-class", "1400", "--test-per-class", "200", "--epochs", "3",
                                     "--buffer", "500"])
