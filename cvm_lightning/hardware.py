"""What this CPU does fast: native bfloat16, and how many threads a run uses.

``cvm run --precision`` takes Lightning's precision names. ``bf16-mixed``
runs matrix products and convolutions in bfloat16 under ``torch.autocast``
(Lightning's ``MixedPrecision`` plugin for CVM,
:func:`cvm_lightning.model.cpu.autocast` for the Avalanche baselines). It
pays only on CPUs with bfloat16 units (x86 AVX512-BF16 or AMX, Arm BF16);
elsewhere it is emulated and slower than ``32-true``, so a run refuses it there. ``--accelerator gpu``
trains on a CUDA GPU instead (:mod:`cvm_lightning.model.gpu` asks torch
about it). The module reads the CPU from the operating system and imports
no torch, so the command line checks flags without it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cvm_lightning.errors import ConfigError

# CPU flags (Linux /proc/cpuinfo) that mean native bfloat16 arithmetic.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags of int8 dot-product instructions: with them onnxruntime's u8 x s8 products add up in 32 bits; without
# them (AVX2 alone) pairs add up in 16 bits first and can saturate, unless the weights keep to 7 bits.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
# The vector features `cvm info` reports, by their /proc/cpuinfo names.
VECTOR_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "avx512_vnni": "AVX512-VNNI",
                   "avx_vnni": "AVX-VNNI", "amx_tile": "AMX", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first value of each field of ``/proc/cpuinfo`` (empty where it does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The feature flags of this CPU (empty where ``/proc/cpuinfo`` does not exist)."""
    fields = _cpuinfo()
    return frozenset(fields.get("flags", fields.get("Features", "")).split())  # x86, Arm


def native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (so ``bf16-mixed`` is faster than ``32-true``)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def int8_dot_products() -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI, AMX-INT8 or Arm dot product)."""
    return any(flag in cpu_flags() for flag in INT8_DOT_FLAGS)


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (``"unknown CPU"`` where it does not)."""
    return _cpuinfo().get("model name", "unknown CPU")


# Lightning's accelerator names (``--accelerator``) and the torch device type each one trains on.
TORCH_DEVICES = {"cpu": "cpu", "gpu": "cuda"}


def check_precision(precision: str, accelerator: str = "cpu") -> None:
    """``precision`` must run natively on this CPU: ``bf16-mixed`` needs bfloat16 units (a GPU's are checked apart)."""
    if accelerator != "cpu":  # cvm_lightning.model.gpu.check_accelerator asks torch about the GPU's
        return
    if precision == "bf16-mixed" and not native_bf16():
        raise ConfigError(
            "--precision bf16-mixed needs a CPU with native bfloat16 (AVX512-BF16, AMX or Arm BF16), and this one "
            "has none: bfloat16 would be emulated and slower. Use --precision 32-true."
        )


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    """More threads than cores only makes them wait on each other: ``threads`` must fit the cores available."""
    cores = available_cores()
    if threads is not None and threads > cores:
        raise ConfigError(f"--threads {threads} is more than the {cores} CPU core(s) this process may use; "
                          f"pass at most {cores} (or leave it out for one per physical core).")
