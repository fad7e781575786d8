"""Concept bank: cold build vs warm (cached) load, side by side in one run.

    python benchmarks/concept_bank.py [--sizes 10 100 1000] [--json out.json]

Cold = empty cache: load the text model, encode, write the cache. Warm = the
same bank again from the cache, without loading the text model. Each warm
figure is the median of several loads. Target: warm <= 50 ms for 100 names.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from cvm_lightning.concepts import ConceptBank


def measure(n: int, repeats: int) -> dict:
    names = [f"object kind {i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ConceptBank.from_names(names, cache_dir=cache)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(repeats):
            start = time.perf_counter()
            ConceptBank.from_names(names, cache_dir=cache)
            warm.append(time.perf_counter() - start)
    return {"names": n, "cold_s": round(cold, 3), "warm_ms": round(1000 * statistics.median(warm), 2),
            "speedup": round(cold / statistics.median(warm), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    rows = [measure(n, args.repeats) for n in args.sizes]
    print(f"{'names':>6}  {'cold s':>8}  {'warm ms':>8}  {'speedup':>8}")
    for row in rows:
        print(f"{row['names']:>6}  {row['cold_s']:>8.3f}  {row['warm_ms']:>8.2f}  {row['speedup']:>7.0f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
