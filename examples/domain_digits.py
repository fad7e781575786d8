"""sklearn's digits under five conditions, domain-incremental, embedded: runs anywhere with no data.

    python examples/domain_digits.py [any `cvm run` flag, e.g. --seeds 0 1 2 --strategies cvm,replay,naive]

Prints the results table and the table of each condition, and writes results.json, results.md and plots to --out.
"""

from _common import run_benchmark

if __name__ == "__main__":
    run_benchmark("domain-digits", [])
