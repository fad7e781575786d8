"""Fashion-MNIST, 5 x 2 classes at 28x28 grey.

    sudo apt-get install dataset-fashion-mnist   # or --data-root DIR with the four IDX files
    python examples/split_fashion_mnist.py [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('split-fashion-mnist', [])
