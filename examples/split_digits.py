"""sklearn's digits, embedded: runs anywhere with no data.

    python examples/split_digits.py [any `cvm run` flag, e.g. --epochs 3 --strategies cvm,replay]

Prints the results table and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark('split-digits', [])
