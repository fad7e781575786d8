"""Shared by the benchmark scripts: run `cvm run` for one benchmark with its arguments."""

from __future__ import annotations

import sys

from cvm_lightning.app.cli import main


def run_benchmark(benchmark: str, defaults: list[str]) -> None:
    """``cvm run --benchmark BENCHMARK`` with ``defaults``, overridden by command-line arguments."""
    sys.exit(main(["run", "--benchmark", benchmark, *defaults, *sys.argv[1:]]))
