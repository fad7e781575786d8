"""Benchmarks: class-incremental streams as Avalanche scenarios, by name."""

from cvm_lightning.streams import benchmarks as _benchmarks  # noqa: F401 - registers the benchmarks
from cvm_lightning.streams.registry import (
    BENCHMARKS,
    Benchmark,
    StreamConfig,
    build_benchmark,
    register_benchmark,
)

__all__ = ["BENCHMARKS", "Benchmark", "StreamConfig", "build_benchmark", "register_benchmark"]
