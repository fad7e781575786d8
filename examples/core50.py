"""CORe50 new-classes scenario, 10 x 5 objects.

    python examples/core50.py --data-root DIR [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('core50', ['--train-per-class', '100'])
