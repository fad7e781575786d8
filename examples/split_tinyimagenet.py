"""Tiny-ImageNet, 10 x 20 classes at 64x64.

    python examples/split_tinyimagenet.py --data-root DIR [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

The CPU-scaled protocol of docs/results.md (about 10 minutes a strategy on 2 cores):

    python examples/split_tinyimagenet.py --data-root DIR --train-per-class 20 --test-per-class 10 \
        --epochs 2 --batch-size 32 --buffer 500 --augment none --strategies cvm,replay,der

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('split-tinyimagenet', ['--input-size', '64'])
